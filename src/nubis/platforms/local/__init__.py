"""The local platform: every replica a `python -m nubis.processor.replica` process, supervised by
the agent (`nubis agent`), which the control plane drives over a Unix socket."""

from nubis.platforms.base import desired_replicas
from nubis.platforms.local.client import AgentClient, AgentRequestError, AgentUnavailable
from nubis.platforms.local.platform import LocalPlatform, create

__all__ = ["AgentClient", "AgentRequestError", "AgentUnavailable", "LocalPlatform", "create", "desired_replicas"]
