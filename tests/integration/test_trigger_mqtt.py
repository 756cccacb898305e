"""The `mqtt` trigger against the real mosquitto: the event shape, a persistent session that gets
what was published while the function was down, PUBACK only after the handler (a replica killed
mid-handler gets the message again, counted as redelivered), retries then the dead letter (a topic, or the platform's
failed-event store), a broker down at start waited for with no password shown, and two replicas
sharing the one session (one consumes, the other takes over when it dies)."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from handler_output import lines
from harness import RunningFunction, wait_until
from mqtt_support import SHARED_PORT, Client, Mosquitto, publish, triggers, write_function
from paho.mqtt.enums import CallbackAPIVersion
from test_gateway_tls import self_signed

from leaks import alive
from nubis.failed_events import FailedEventStore
from nubis.trigger_reports import read_reports

Run = Callable[..., RunningFunction]


@pytest.fixture
def function_dir(tmp_path: Path) -> Path:
    return write_function(tmp_path / "fn").parent


@pytest.fixture
def names() -> Iterator[tuple[str, str]]:
    """A topic and a client ID of this test's own; the broker forgets the session afterwards."""
    tag = uuid.uuid4().hex[:8]
    client_id = f"nubis-test-{tag}"
    yield f"nubis-test/{tag}", client_id
    forget = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    forget.connect("127.0.0.1", SHARED_PORT)
    forget.disconnect()


def start(run: Run, function_dir: Path, spec: str, out: Path, *args: str, **env: str) -> RunningFunction:
    function = run(
        function_dir / "handler.py",
        "--handler",
        "handler:handler",
        "--triggers",
        spec,
        *args,
        env={"OUT": str(out), **env},
    )
    subscribed(function)
    return function


def counted(state_dir: Path, function: RunningFunction, **expected: int) -> dict[str, int]:
    """The trigger's counters once its replica reported `expected`."""

    def reported() -> dict[str, int] | None:
        for report in read_reports(state_dir, function.pid):
            counts: dict[str, int] = report["counts"]
            if all(counts.get(key) == value for key, value in expected.items()):
                return counts
        return None

    return wait_until(reported, 30, f"the replica reporting {expected}")


def subscribed(function: RunningFunction, times: int = 1) -> None:
    wait_until(lambda: function.stderr_text().count("mqtt: subscribed") >= times, 30, "the trigger subscribed")


def two_replicas(run: Run, function_dir: Path, spec: str, out: Path) -> tuple[RunningFunction, RunningFunction]:
    """An older replica standing by, and a newer one that took the session from it."""
    older = start(run, function_dir, spec, out)
    newer = start(run, function_dir, spec, out)
    wait_until(lambda: "stands by" in older.stderr_text(), 30, "the older replica standing by")
    return older, newer


def test_messages_reach_the_handler_in_order_and_what_came_while_it_was_down_too(
    run_function: Run, function_dir: Path, names: tuple[str, str], tmp_path: Path
) -> None:
    topic, client_id = names
    out = tmp_path / "out.txt"
    spec = triggers(SHARED_PORT, f"{topic}/#", client_id)
    with Client(SHARED_PORT) as publisher:
        function = start(run_function, function_dir, spec, out)
        for index in range(5):
            publisher.publish(f"{topic}/a", f"m{index}")
        wait_until(lambda: len(lines(out)) == 5, 30, "five messages handled")
        assert [line[0] for line in lines(out)] == [f"m{i}" for i in range(5)]  # one topic: in order
        shape = {tuple(line[2:]) for line in lines(out)}
        assert shape == {("mqtt", "sensors", f"{topic}/a", f"tcp://127.0.0.1:{SHARED_PORT}", "-", "-")}
        assert function.stop() == 0
        publisher.publish(f"{topic}/a", "while-down")  # the broker keeps it for the session
        start(run_function, function_dir, spec, out)
        wait_until(lambda: len(lines(out)) >= 6, 30, "the message published while the function was down")
        # acknowledged after each handler: nothing of the first run came again, and it came last
        assert [line[0] for line in lines(out)] == [f"m{i}" for i in range(5)] + ["while-down"]


@pytest.mark.parametrize("version", [4, 5])
def test_a_replica_killed_mid_handler_gets_the_message_again_counted_as_redelivered(
    run_function: Run, function_dir: Path, names: tuple[str, str], tmp_path: Path, version: int
) -> None:
    topic, client_id = names
    out, state = tmp_path / "out.txt", tmp_path / "state"
    spec = triggers(SHARED_PORT, topic, client_id, protocolVersion=version)
    reports = ("--trigger-state-dir", str(state))
    with Client(SHARED_PORT, version=version) as publisher:
        first = start(run_function, function_dir, spec, out, *reports, SLOW="1")
        publisher.publish(topic, "slow-1", headers={"k": "v"}, content_type="text/plain")
        wait_until(lambda: Path(f"{out}.started").exists(), 30, "the handler to start")
        assert counted(state, first, received=1)["redelivered"] == 0  # a first delivery
        os.killpg(first.pid, signal.SIGKILL)
        wait_until(lambda: not alive(first.pid), 10, "the replica gone")
        again = start(run_function, function_dir, spec, out, *reports)
        wait_until(lambda: lines(out), 30, "the message handled by the next replica")
        [line] = lines(out)
        # the broker sent it again with DUP set: the trigger counts it as redelivered
        counts = counted(state, again, handled=1)
        assert counts["received"] == 1 and counts["redelivered"] == 1
        properties = ["v", "text/plain"] if version == 5 else ["-", "-"]  # MQTT 3.1.1 has no properties
        assert line[0] == "slow-1" and line[6:] == properties
        publisher.publish(topic, "fresh")
        wait_until(lambda: len(lines(out)) == 2, 30, "a new message handled")
        assert counted(state, again, handled=2)["redelivered"] == 1  # a new message is no redelivery


@pytest.mark.parametrize("version", [4, 5])
def test_a_failing_message_is_retried_then_published_to_the_dead_letter(
    run_function: Run, function_dir: Path, names: tuple[str, str], tmp_path: Path, version: int
) -> None:
    topic, client_id = names
    out = tmp_path / "out.txt"
    with Client(SHARED_PORT, version=version) as client:
        client.subscribe(f"{topic}/dead")
        spec = triggers(
            SHARED_PORT, f"{topic}/in", client_id, protocolVersion=version, deadLetter=f"{topic}/dead", maxAttempts=3
        )
        function = start(run_function, function_dir, spec, out)
        client.publish(f"{topic}/in", "fail-1", headers={"k": "kept"})
        client.publish(f"{topic}/in", "after")
        dead = client.next_message()
        if version == 5:
            properties = dict(dead.properties.UserProperty)  # type: ignore[union-attr]
            assert dead.payload == b"fail-1" and properties["k"] == "kept"
            assert properties["nubis-attempts"] == "3" and properties["nubis-source"] == f"{topic}/in"
            assert "told to fail" in properties["nubis-error"] and properties["nubis-id"]
        else:
            record = json.loads(dead.payload)
            assert record["attempts"] == 3 and record["source"] == f"{topic}/in" and "told to fail" in record["error"]
            assert record["trigger_kind"] == "mqtt" and record["event"]["body"] == "ZmFpbC0x"  # base64 of fail-1
        # the topic is ordered: the next message ran only once the failed one was settled
        wait_until(lambda: [line[0] for line in lines(out)] == ["after"], 10, "the next message, after it")
        assert function.stderr_text().count("retrying in") == 2


def test_without_a_dead_letter_the_failed_event_store_keeps_it(
    run_function: Run, function_dir: Path, names: tuple[str, str], tmp_path: Path
) -> None:
    topic, client_id = names
    with Client(SHARED_PORT) as publisher:
        spec = triggers(SHARED_PORT, topic, client_id, maxAttempts=2)
        data = tmp_path / "data"
        function = start(run_function, function_dir, spec, tmp_path / "out.txt", NUBIS_DATA_DIR=str(data))
        publisher.publish(topic, "fail-alone")
        store = FailedEventStore(data / "failed" / function.name)
        [record] = wait_until(store.records, 30, "the failed event in the platform store")
        assert record.body() == b"fail-alone" and record.attempts == 2 and record.source == topic
        assert record.trigger_kind == "mqtt" and record.trigger_name == "sensors" and "told to fail" in record.error


def test_a_broker_down_at_start_is_waited_for_and_its_password_never_shown(
    run_function: Run, function_dir: Path, tmp_path: Path, free_port: Callable[[], int]
) -> None:
    broker = Mosquitto(tmp_path / "mosquitto", free_port())
    out = tmp_path / "out.txt"
    url = f"tcp://reader:hunter2@127.0.0.1:{broker.port}"
    spec = triggers(broker.port, "down/at-start", "nubis-test-down", url=url)
    function = run_function(
        function_dir / "handler.py", "--handler", "handler:handler", "--triggers", spec, env={"OUT": str(out)}
    )
    try:
        wait_until(lambda: "cannot reach" in function.stderr_text(), 30, "the trigger waiting for the broker")
        # nothing to await while it waits: let it try twice more (0.5 s, then 1 s later)
        waited_since = time.monotonic()
        wait_until(lambda: time.monotonic() - waited_since > 2.0, 5, "two more attempts")
        broker.start()
        subscribed(function)
        publish(broker.port, "down/at-start", "late")
        wait_until(lambda: lines(out), 30, "the message handled")
        assert lines(out)[0][5] == f"tcp://reader:***@127.0.0.1:{broker.port}"  # event.url
        function.stop()
        log = function.stderr_text() + function.stdout_text()
        assert log.count(" WARN ") == 1 and "cannot reach" in log and "answers again" in log
        assert "hunter2" not in log and "reader:***@" in log
    finally:
        broker.stop()


@dataclass
class Pair:
    topic: str
    out: Path
    #: standing by, since `newer` took the session from it (the newest wins)
    older: RunningFunction
    newer: RunningFunction


@pytest.fixture
def pair(run_function: Run, function_dir: Path, names: tuple[str, str], tmp_path: Path) -> Pair:
    """Two replicas of one function on the machine's broker."""
    topic, client_id = names
    out = tmp_path / "out.txt"
    older, newer = two_replicas(run_function, function_dir, triggers(SHARED_PORT, topic, client_id), out)
    return Pair(topic, out, older, newer)


def test_two_replicas_share_the_session_one_consumes_the_other_takes_over(pair: Pair) -> None:
    topic, out, older, newer = pair.topic, pair.out, pair.older, pair.newer
    publish(SHARED_PORT, topic, *(f"a{index}" for index in range(10)))
    wait_until(lambda: len(lines(out)) == 10, 30, "ten messages handled")
    os.killpg(newer.pid, signal.SIGKILL)  # its Will tells the other it left
    subscribed(older, times=2)
    publish(SHARED_PORT, topic, *(f"b{index}" for index in range(10)))
    wait_until(lambda: len({line[0] for line in lines(out)}) == 20, 30, "every message handled")
    handled = [line[0] for line in lines(out)]
    assert [b for b in handled if b.startswith("a")][:10] == [f"a{i}" for i in range(10)]
    assert [b for b in handled if b.startswith("b")] == [f"b{i}" for i in range(10)]
    assert "stands by" not in newer.stderr_text()
    # the older one: the session lost to the newer one, then standing by (once)
    assert older.stderr_text().count(" WARN ") == 2 and older.stderr_text().count("standing by until") == 1


def test_mqtts_reaches_a_tls_listener_trusted_by_the_system_store(
    run_function: Run, function_dir: Path, tmp_path: Path, free_port: Callable[[], int]
) -> None:
    cert, key = self_signed(tmp_path / "tls")
    broker = Mosquitto(tmp_path / "mosquitto", free_port(), tls=(cert, key))
    broker.start()
    out = tmp_path / "out.txt"
    try:
        spec = triggers(broker.port, "secure/t", "nubis-test-tls", url=f"mqtts://localhost:{broker.port}")
        # the trigger trusts the system's store; SSL_CERT_FILE points OpenSSL's at the test CA
        start(run_function, function_dir, spec, out, SSL_CERT_FILE=str(cert))
        publish(broker.port, "secure/t", "sealed", ca=cert)
        wait_until(lambda: lines(out), 30, "the message handled")
        assert lines(out)[0][0] == "sealed" and lines(out)[0][5] == f"mqtts://localhost:{broker.port}"
    finally:
        broker.stop()


def test_a_draining_replica_hands_the_session_to_the_one_standing_by(pair: Pair) -> None:
    topic, out, older, newer = pair.topic, pair.out, pair.older, pair.newer
    # a clean disconnect drops the Will: only the drain's own `left` message wakes the other
    assert newer.stop() == 0
    subscribed(older, times=2)
    publish(SHARED_PORT, topic, "after-drain")
    wait_until(lambda: lines(out), 30, "the message handled by the older replica")
    assert int(lines(out)[0][1]) != newer.pid and "did not come back" not in older.stderr_text()


def test_a_standby_takes_the_session_when_its_holder_died_while_the_broker_was_down(
    run_function: Run, function_dir: Path, tmp_path: Path, free_port: Callable[[], int]
) -> None:
    broker = Mosquitto(tmp_path / "mosquitto", free_port())
    broker.start()
    out = tmp_path / "out.txt"
    spec = triggers(broker.port, "reclaim/t", "nubis-test-reclaim")
    try:
        older, newer = two_replicas(run_function, function_dir, spec, out)
        broker.crash()  # a broker that stops cleanly publishes its clients' Wills; a crash does not
        os.killpg(newer.pid, signal.SIGKILL)  # and no broker publishes this one's
        wait_until(lambda: not alive(newer.pid), 10, "the holder gone")
        broker.start()
        # nobody says `taken` again within RECLAIM_AFTER (10 s): the standby takes the session
        wait_until(lambda: "did not come back" in older.stderr_text(), 40, "the standby reclaiming the session")
        subscribed(older, times=2)
        publish(broker.port, "reclaim/t", "reclaimed")
        wait_until(lambda: lines(out), 30, "the message handled")
    finally:
        broker.stop()
