"""Where replicas run: `base.Platform` (with its `Builder`) is the interface the reconciler uses;
`registry` picks one by name: `local` runs replicas as processes supervised by the local agent,
`memory` keeps deployments as in-memory state machines (docs/plugins.md)."""
