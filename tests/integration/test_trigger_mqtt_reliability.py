"""The `mqtt` trigger loses nothing: 1,000 QoS 1 messages on four topics, and during their
consumption a worker is SIGKILLed, then the replica (started again), then mosquitto itself
restarts (its own instance, persistence on). Every message is handled at least once, in its
topic's order, and the repeats stay within the in-flight window."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from handler_output import lines
from harness import RunningFunction, wait_until
from mqtt_support import Mosquitto, publish, triggers, write_function

from leaks import alive

TOTAL = 1000
TOPICS = 4
WORKERS = 2
PREFETCH = 4


@pytest.fixture
def broker(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[Mosquitto]:
    own = Mosquitto(tmp_path / "mosquitto", free_port())
    own.start()
    yield own
    own.stop()


def window(version: int) -> int:
    """The most messages the broker has sent this client and not seen acknowledged: MQTT 5's
    Receive Maximum, which the trigger sets to its prefetch; mosquitto's own limit for 3.1.1."""
    return PREFETCH if version == 5 else Mosquitto.INFLIGHT


@pytest.mark.parametrize("version", [4, 5])
def test_nothing_is_lost_when_a_worker_the_replica_and_the_broker_are_killed(
    run_function: Callable[..., RunningFunction], tmp_path: Path, broker: Mosquitto, version: int
) -> None:
    source = write_function(tmp_path / "fn")
    out = tmp_path / "out.txt"
    spec = triggers(
        broker.port, "load/#", "nubis-reliability", workers=WORKERS, prefetchCount=PREFETCH, protocolVersion=version
    )
    args = (source, "--handler", "handler:handler", "--triggers", spec)
    env = {"OUT": str(out), "PAUSE": "0.003"}

    def subscribed(function: RunningFunction) -> None:
        wait_until(lambda: "mqtt: subscribed" in function.stderr_text(), 30, "the trigger subscribed")

    first = run_function(*args, env=env)
    subscribed(first)
    for topic in range(TOPICS):
        publish(broker.port, f"load/{topic}", *(f"e{index:04d}" for index in range(topic, TOTAL, TOPICS)))
    wait_until(lambda: len(lines(out)) >= 150, 60, "150 messages handled")
    os.kill(int(lines(out)[-1][1]), signal.SIGKILL)  # the worker that handled the latest one
    wait_until(lambda: len(lines(out)) >= 350, 60, "350 messages handled after the worker's SIGKILL")
    os.killpg(first.pid, signal.SIGKILL)
    wait_until(lambda: not alive(first.pid), 10, "the replica gone")
    subscribed(run_function(*args, env=env))
    wait_until(lambda: len(lines(out)) >= 600, 60, "600 messages handled by the second replica")
    broker.stop()
    broker.start()
    wait_until(lambda: len({line[0] for line in lines(out)}) == TOTAL, 60, "every message handled after the restarts")

    handled = [line[0] for line in lines(out)]
    for topic in range(TOPICS):
        # the first time each message of a topic ran, it ran in the topic's order
        firsts = list(dict.fromkeys(body for body in handled if int(body[1:]) % TOPICS == topic))
        assert firsts == sorted(firsts), f"load/{topic} out of order"
    duplicates = sum(count - 1 for count in Counter(handled).values())
    # what each fault may repeat: the killed worker's one event; what the killed replica had
    # handled but not yet acknowledged (at most its window of prefetchCount); what was handled
    # while the stopping broker no longer read the PUBACKs (at most what it had sent unacknowledged)
    bound = 1 + PREFETCH + window(version)
    assert duplicates <= bound, Counter(handled).most_common(8)
    print(f"MQTT {version}: {TOTAL} messages, {duplicates} handled twice (at most {bound}) after the three faults")
