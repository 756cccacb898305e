"""The autoscaler's arithmetic (`nubis.control.scale_policy`) on made-up replica reports."""

from __future__ import annotations

import pytest

from nubis.control.scale_policy import Decision, Memory, decide, policy_of
from nubis.errors import SpecError
from nubis.platforms.status import FunctionStatus, ReplicaLoad, ReplicaStatus


def status(desired: int, *loads: ReplicaLoad) -> FunctionStatus:
    replicas = [
        ReplicaStatus(name=f"g1-r{i}", pid=100 + i, generation=1, state="ready", restarts=0, load=load)
        for i, load in enumerate(loads)
    ]
    return FunctionStatus(
        name="f",
        state="ready",
        message="",
        generation=1,
        active_generation=1,
        replicas=replicas,
        replicas_desired=desired,
    )


def config(**spec: object) -> dict[str, object]:
    annotations = spec.pop("annotations", {})
    return {"metadata": {"name": "f", "annotations": annotations}, "spec": spec}


def test_policy_reads_nuclio_fields_and_nubis_annotations() -> None:
    policy = policy_of(
        config(
            minReplicas=0,
            maxReplicas=4,
            targetCPU=50,
            scaleToZero={"scaleResources": [{"windowSize": "2m"}, {"windowSize": "10m"}]},
            annotations={"nubis.io/target-concurrency": "2.5", "nubis.io/scale-down-window": "30s"},
        )
    )
    assert (policy.min_replicas, policy.max_replicas, policy.target_concurrency) == (0, 4, 2.5)
    assert (policy.target_cpu, policy.scale_down_window, policy.zero_after) == (0.5, 30.0, 600.0)
    assert policy_of(config(minReplicas=0, annotations={"nubis.io/scale-to-zero-after": "5s"})).zero_after == 5.0
    assert policy_of(config(minReplicas=0), zero_default=None).zero_after is None  # disabled by the server
    assert policy_of(config(minReplicas=2)).zero_after is None
    assert not policy_of(config(replicas=3)).autoscaled
    with pytest.raises(SpecError, match="target-concurrency"):
        policy_of(config(annotations={"nubis.io/target-concurrency": "lots"}))


def test_scales_up_only_once_the_overload_lasts_and_down_after_the_window() -> None:
    policy = policy_of(config(minReplicas=1, maxReplicas=5, annotations={"nubis.io/scale-down-window": "10s"}))
    memory = Memory(last_activity=0.0)
    busy = ReplicaLoad(workers=2, concurrency=7.0, in_flight=2, queued=5, events=10)
    assert decide(policy, status(1, busy), memory, 0.0) is None  # one report is not sustained
    decision = decide(policy, status(1, busy), memory, 1.0)
    assert decision is not None and decision.replicas == 4 and "concurrency 7" in decision.reason
    idle = ReplicaLoad(workers=2, events=10)
    assert decide(policy, status(4, idle, idle, idle, idle), memory, 5.0) is None  # within the window
    assert decide(policy, status(4, idle, idle, idle, idle), memory, 12.0) == Decision(
        1, "concurrency 0 for a target of 2 per replica, for 10 s"
    )


def test_never_beyond_max_and_cpu_is_a_second_signal() -> None:
    policy = policy_of(config(minReplicas=1, maxReplicas=3, targetCPU=50))
    memory = Memory(last_activity=0.0)
    hot = ReplicaLoad(workers=4, concurrency=1.0, in_flight=1, cpu=0.9, events=1)
    decide(policy, status(1, hot), memory, 0.0)
    decision = decide(policy, status(1, hot), memory, 1.0)
    assert decision is not None and decision.replicas == 2 and "CPU" in decision.reason
    flood = ReplicaLoad(workers=1, concurrency=50.0, in_flight=1, queued=49, events=1)
    decide(policy, status(1, flood), memory, 2.0)
    assert decide(policy, status(1, flood), memory, 3.0) == Decision(3, "concurrency 50 for a target of 1 per replica")


def test_to_zero_after_the_inactivity_window_and_up_when_woken() -> None:
    policy = policy_of(config(minReplicas=0, maxReplicas=2, annotations={"nubis.io/scale-to-zero-after": "60s"}))
    memory = Memory(last_activity=0.0)
    idle = ReplicaLoad(workers=1, events=3)
    assert decide(policy, status(1, idle), memory, 30.0) is None
    assert decide(policy, status(1, idle), memory, 61.0) == Decision(0, "no event for 60 s")
    asleep = ReplicaLoad(state="asleep", workers=1, events=3)
    assert decide(policy, status(0, asleep), memory, 62.0) is None
    woken = ReplicaLoad(state="awake", workers=1, events=4)
    assert decide(policy, status(0, woken), memory, 63.0) == Decision(1, "woken by an event")


def test_an_event_restarts_the_inactivity_window() -> None:
    policy = policy_of(config(minReplicas=0, annotations={"nubis.io/scale-to-zero-after": "10s"}))
    memory = Memory(last_activity=0.0)
    decide(policy, status(1, ReplicaLoad(events=1)), memory, 1.0)
    decide(policy, status(1, ReplicaLoad(events=2)), memory, 9.0)
    assert decide(policy, status(1, ReplicaLoad(events=2)), memory, 15.0) is None
    assert decide(policy, status(1, ReplicaLoad(events=2)), memory, 19.5) == Decision(0, "no event for 10 s")


def test_reports_from_before_an_ask_to_sleep_do_not_read_as_a_wake() -> None:
    policy = policy_of(config(minReplicas=0))
    memory = Memory(last_activity=0.0, events_seen=5, zero_asked_at=10.0)
    stale = ReplicaLoad(state="awake", events=6, cold_starts=1)  # written before the replica slept
    assert decide(policy, status(0, stale), memory, 10.5) is None
    assert decide(policy, status(0, ReplicaLoad(state="asleep", events=6, cold_starts=1)), memory, 11.0) is None
    woken = ReplicaLoad(state="awake", events=7, cold_starts=2)
    assert decide(policy, status(0, woken), memory, 11.5) == Decision(1, "woken by an event")
