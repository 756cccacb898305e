"""The parts every message trigger shares: the failure policy, the failed-event store, and the
redis-stream kind's attributes (parsed as the control plane validates them)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from nubis.errors import SpecError
from nubis.failed_events import FailedEvent, FailedEventStore
from nubis.processor.events import Response, refusal_response
from nubis.processor.outcomes import Outcome, Refusal
from nubis.processor.triggers.failures import Policy, Verdict, policy_of
from nubis.processor.triggers.redis_stream_config import parse
from nubis.processor.triggers.registry import get_default_registry
from nubis.redact import masked_url
from nubis.spec import Trigger

FIELD = "spec.triggers.events"


def handled(status: int = 200) -> Response:
    return Response(status, "text/plain", {}, b"ok")


def test_a_handled_event_of_any_status_is_done_unless_5xx_fails() -> None:
    assert Policy().judge(handled(500), 1) is Verdict.DONE
    assert Policy(fail_on_5xx=True).judge(handled(503), 1) is Verdict.RETRY
    assert Policy(fail_on_5xx=True).judge(handled(404), 1) is Verdict.DONE


def test_failures_are_retried_then_given_up_and_a_drain_gives_them_back() -> None:
    crashed = Response(500, "text/plain", {}, b"worker lost", outcome=Outcome.WORKER_LOST)
    policy = Policy(max_attempts=3)
    assert [policy.judge(crashed, attempt) for attempt in (1, 2, 3)] == [Verdict.RETRY, Verdict.RETRY, Verdict.GIVE_UP]
    assert policy.judge(crashed, 1, stopping=True) is Verdict.RETURN
    assert policy.judge(refusal_response(Refusal.SHUTTING_DOWN), 1) is Verdict.RETURN
    assert policy.judge(refusal_response(Refusal.NO_WORKER), 3) is Verdict.RETURN


def test_backoff_doubles_up_to_its_maximum() -> None:
    policy = Policy(backoff=0.5, backoff_max=3.0)
    assert [policy.delay(attempt) for attempt in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize(
    ("attributes", "annotations", "at"),
    [
        ({"maxAttempts": 0}, None, f"{FIELD}.attributes.maxAttempts"),
        ({"maxAttempts": "3"}, None, f"{FIELD}.attributes.maxAttempts"),
        ({"retryBackoff": -1}, None, f"{FIELD}.attributes.retryBackoff"),
        ({}, {"nubis.io/fail-on-status": "4xx"}, "metadata.annotations.nubis.io/fail-on-status"),
    ],
)
def test_bad_policy_attributes_are_precise_errors(
    attributes: dict[str, object], annotations: dict[str, str] | None, at: str
) -> None:
    with pytest.raises(SpecError) as caught:
        policy_of(attributes, annotations, FIELD)
    assert caught.value.field == at


def test_the_failed_event_store_keeps_one_private_file_per_event(tmp_path: Path) -> None:
    store = FailedEventStore(tmp_path / "failed" / "fn")
    frame = {"t": "e", "id": "orders:1-0", "body": b"\x00payload", "headers": {"k": "v"}, "path": "orders"}
    failed = FailedEvent.of(
        frame,  # type: ignore[arg-type]
        function="fn",
        trigger_kind="redis-stream",
        trigger_name="events",
        source="orders",
        error="boom",
        attempts=3,
    )
    path = store.record(failed)
    store.record(failed)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.name == "orders_1-0.json"
    [kept] = store.records()
    assert kept.body() == b"\x00payload" and kept.event["headers"] == {"k": "v"} and kept.attempts == 3
    assert store.remove("orders:1-0") and store.records() == []


def trigger(**attributes: object) -> Trigger:
    return Trigger.model_validate(
        {"kind": "redis-stream", "url": "redis://:s3cret@db:6379/1", "attributes": attributes}
    )


def test_redis_stream_attributes_parse_with_defaults_and_mask_the_password() -> None:
    config = parse(trigger(stream="orders"), FIELD, "billing")
    assert config.streams == ("orders",) and config.group == "nubis-billing" and config.start_id == "0"
    assert "s3cret" not in config.where and "***" in config.where
    assert masked_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("attributes", "at"),
    [
        ({}, "attributes.streams"),
        ({"streams": []}, "attributes.streams"),
        ({"stream": "a", "initialOffset": "middle"}, "attributes.initialOffset"),
        ({"stream": "a", "claimIdleSeconds": 0}, "attributes.claimIdleSeconds"),
        ({"stream": "a", "deadLetter": 3}, "attributes.deadLetter"),
        ({"stream": "a", "maxAttempts": -2}, "attributes.maxAttempts"),
    ],
)
def test_bad_redis_stream_attributes_are_refused_at_deploy(attributes: dict[str, object], at: str) -> None:
    with pytest.raises(SpecError) as caught:
        get_default_registry().validate("redis-stream", trigger(**attributes), field=FIELD)
    assert caught.value.field == f"{FIELD}.{at}"
    assert "s3cret" not in str(caught.value)


def test_credentials_in_any_message_are_redacted() -> None:
    from nubis.redact import redacted

    text = redacted("lost amqp://app:hunter2@rabbit:5672/v, then nats://t0ken@h:4222; http://h/x is fine")
    assert text == "lost amqp://app:***@rabbit:5672/v, then nats://***@h:4222; http://h/x is fine"


class _BrokenBroker:
    """A kind whose connect fails in a way no kind expects (a bug, a broken client library)."""

    where = "redis://127.0.0.1:1/0"
    dead_letter = None

    def __init__(self) -> None:
        self.tries = 0

    async def connect(self, prefetch: int) -> object:
        self.tries += 1
        raise RuntimeError("client library broke at amqp://u:hunter2@h:5672/")


def test_an_unexpected_failure_to_connect_is_an_error_state_and_retried(tmp_path: Path) -> None:
    import asyncio

    from nubis.processor.triggers import consumer

    async def run() -> tuple[str, str, int]:
        broker = _BrokenBroker()
        trigger = consumer.ConsumerTrigger(
            kind="redis-stream",
            name="events",
            function="fn",
            broker=broker,  # type: ignore[arg-type]
            policy=Policy(),
            failed_store=FailedEventStore(tmp_path),
            reconnect_max=0.05,
        )
        await trigger.start(pool=None)  # type: ignore[arg-type]
        for _ in range(200):
            if broker.tries >= 3:
                break
            await asyncio.sleep(0.01)
        report = trigger.report()
        await trigger.stop_accepting()
        await trigger.close()
        return str(report["state"]), str(report["message"]), broker.tries

    state, message, tries = asyncio.run(run())
    assert tries >= 3 and state == "error"
    assert "client library broke" in message and "hunter2" not in message and "u:***@h" in message


def test_backoffs_may_be_go_durations_as_nuclio_writes_them() -> None:
    from nubis.processor.triggers.failures import policy_of

    policy = policy_of({"retryBackoff": "2s", "retryBackoffMax": "1m"}, None, "spec.triggers.q")
    assert (policy.backoff, policy.backoff_max) == (2.0, 60.0)
