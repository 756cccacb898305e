"""Batch mode on the HTTP trigger (NUCLIO.md §2.7, docs/batching.md) through a real `nubis run`:
concurrent requests share handler calls of up to `batchSize` events, and each caller gets the
response that names its event, the error of its whole batch, or the processor's "no result" error
at its timeout.

The handler answers each event with its body and the bodies of its whole batch, so which requests
shared a call is read from the answers, not guessed from timing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from harness import Launcher, RunningFunction, http_client

HANDLER = """
import nuclio_sdk


def handler(context, batch):
    bodies = [event.body.decode() for event in batch]
    if "raise" in bodies:
        raise RuntimeError("the batch of " + ",".join(bodies) + " failed")
    together = ",".join(bodies)
    return [
        nuclio_sdk.Response(body="%s in %s" % (body, together), event_id=event.id, status_code=201)
        for event, body in zip(batch, bodies)
        if body != "drop"
    ]
"""

FUNCTION_YAML = """
metadata:
  name: batched
spec:
  handler: main:handler
  runtime: python
  eventTimeout: 1s
  triggers:
    web:
      kind: http
      numWorkers: 1
      batch:
        mode: enable
        batchSize: 4
        timeout: 50ms
"""


@pytest.fixture(scope="module")
def batched(nubis: Launcher, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFunction]:
    directory: Path = tmp_path_factory.mktemp("batched")
    (directory / "main.py").write_text(HANDLER)
    (directory / "function.yaml").write_text(FUNCTION_YAML)
    with nubis.start(directory) as function:
        yield function


def post_all(function: RunningFunction, bodies: list[str]) -> list[httpx.Response]:
    """Each body in its own request on its own connection, all at once."""

    def post(body: str) -> httpx.Response:
        with http_client(function.url) as client:
            return client.post("/", content=body.encode())

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(post, bodies))


def test_concurrent_requests_share_batches_and_each_gets_its_own_response(batched: RunningFunction) -> None:
    bodies = [f"r{index}" for index in range(16)]
    answers = post_all(batched, bodies)
    batches: dict[str, list[str]] = {}
    for body, answer in zip(bodies, answers, strict=True):
        assert answer.status_code == 201, answer.text
        own, together = answer.text.split(" in ")
        assert own == body
        batches.setdefault(body, together.split(","))
    for body, members in batches.items():
        assert body in members and 1 <= len(members) <= 4
        # every member of a batch saw the same batch
        assert all(batches[member] == members for member in members)


def test_an_event_without_a_response_gets_the_error_at_its_timeout_and_the_others_theirs(
    batched: RunningFunction,
) -> None:
    answers = post_all(batched, ["keep-1", "drop", "keep-2", "keep-3"])
    dropped = answers[1]
    assert dropped.status_code == 500
    assert json.loads(dropped.text)["error"].startswith("the batch handler returned no response for event ")
    for body, answer in zip(["keep-1", "keep-2", "keep-3"], [answers[0], *answers[2:]], strict=True):
        assert answer.status_code == 201 and answer.text.startswith(f"{body} in ")


def test_the_handler_raising_gives_every_event_of_its_batch_the_500(batched: RunningFunction) -> None:
    bodies = ["a", "b", "raise", "c", "d", "e"]
    answers = dict(zip(bodies, post_all(batched, bodies), strict=True))
    failed = answers["raise"]
    assert failed.status_code == 500 and 'Exception caught in handler - "the batch of ' in failed.text
    together = failed.text.split("the batch of ", 1)[1].split(" failed", 1)[0].split(",")
    assert "raise" in together
    for body, answer in answers.items():
        if body in together:
            assert answer.status_code == 500 and answer.text == failed.text
        else:
            assert answer.status_code == 201 and answer.text.startswith(f"{body} in ")
