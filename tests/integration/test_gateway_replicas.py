"""The gateway in front of several replicas of a real `nubis server`: each replica's own socket,
least-in-flight balancing, no new requests to a draining replica, and faults done for real under
load (one of three replicas SIGKILLed; the gateway SIGKILLed)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from harness import wait_until
from server_harness import RunningServer, gateway_port, inline_function, started_server, wait_state

from leaks import alive
from nubis.sockets import replica_sockets_dir

# The replica's pid as the worker sees it: its parent (spawned) or its parent's parent (forked
# from the replica's zygote).
SOURCE = b"""
import json, os, time

def replica_pids():
    parent = os.getppid()
    with open(f"/proc/{parent}/stat") as stat:
        grandparent = int(stat.read().rsplit(")", 1)[1].split()[1])
    return [parent, grandparent]

def handler(context, event):
    if event.path.startswith("/slow"):
        time.sleep(float(event.path.rsplit("/", 1)[1]))
    return context.Response(body=json.dumps({"pids": replica_pids()}), content_type="application/json",
                            status_code=200)
"""

NAME = "trio"
#: client read timeout: a request that hangs fails the test instead of the test hanging
CLIENT_TIMEOUT = 20.0


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, nubis_data_dir: Path, free_port: Callable[[], int]
) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("replicas")
    yield from started_server(
        data_dir, free_port(), "--gateway-port", str(free_port()), env_cache=nubis_data_dir / "envs"
    )


def replica_pids(server: RunningServer, name: str) -> list[int]:
    desired = json.loads((server.data_dir / "agent" / "desired.json").read_text())
    return [record["pid"] for record in desired["functions"][name]["replicas"] if record.get("pid")]


def sockets(server: RunningServer, name: str) -> list[Path]:
    directory = replica_sockets_dir(server.data_dir, name)
    return sorted(directory.glob("*.sock")) if directory.is_dir() else []


def deploy(server: RunningServer, name: str, replicas: int) -> None:
    spec = {"minReplicas": replicas, "maxReplicas": replicas, "triggers": {"http": {"kind": "http", "numWorkers": 1}}}
    with server.client() as api:
        answer = api.post("/api/functions", json=inline_function(name, SOURCE, **spec))
        if answer.status_code == 409:
            answer = api.put(f"/api/functions/{name}", json=inline_function(name, SOURCE, **spec))
        assert answer.status_code in (200, 202, 204), answer.text
        status = wait_state(api, name, {"ready", "error"})["status"]
        assert status["state"] == "ready", status
    wait_until(lambda: len(replica_pids(server, name)) == replicas, 60, f"{replicas} replicas of {name}")
    wait_until(lambda: len(sockets(server, name)) == replicas, 60, f"{replicas} replica sockets of {name}")


@pytest.fixture(scope="module")
def trio(server: RunningServer) -> str:
    deploy(server, NAME, 3)
    url = f"http://127.0.0.1:{gateway_port(server)}/{NAME}"
    # the gateway lists the sockets within its refresh interval: until then the shared port serves
    wait_until(lambda: _status(f"{url}/") == 200, 30, "the route through the gateway")
    return url


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=CLIENT_TIMEOUT).status_code
    except httpx.TransportError:
        return 0


def replica_of(answer: httpx.Response, pids: list[int]) -> int:
    found = [pid for pid in answer.json()["pids"] if pid in pids]
    assert found, f"{answer.json()} names none of the replicas {pids}"
    return found[0]


def test_each_replica_has_its_own_socket_of_this_user_only(server: RunningServer, trio: str) -> None:
    paths = sockets(server, NAME)
    assert len(paths) == 3
    for path in paths:
        assert path.is_socket() and path.stat().st_mode & 0o077 == 0
    assert path.parent.stat().st_mode & 0o077 == 0


def test_concurrent_requests_go_to_the_replica_with_the_fewest_in_flight(server: RunningServer, trio: str) -> None:
    """Three slow requests at once reach three replicas (the kernel's spread over a shared port puts
    two on one replica more often than not: 21 times in 27)."""
    pids = replica_pids(server, NAME)
    time.sleep(1.0)  # two refresh intervals: the gateway lists every socket (not an event it tells)
    with httpx.Client(timeout=CLIENT_TIMEOUT) as client, ThreadPoolExecutor(3) as pool:
        for _ in range(2):
            answers = list(pool.map(lambda _: client.get(f"{trio}/slow/1.0"), range(3)))
            assert [answer.status_code for answer in answers] == [200, 200, 200]
            assert sorted(replica_of(answer, pids) for answer in answers) == sorted(pids)


class Load:
    """Clients sending requests in a loop through the gateway until stopped, every outcome kept."""

    def __init__(self, url: str, method: str, clients: int) -> None:
        self.url, self.method = url, method
        self.stop = threading.Event()
        #: (start, end, status or error) of every request
        self.outcomes: list[tuple[float, float, int | str]] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(CLIENT_TIMEOUT + 5)
        assert not any(thread.is_alive() for thread in self.threads), "a client hung"

    def _run(self) -> None:
        with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
            while not self.stop.is_set():
                start = time.monotonic()
                outcome: int | str
                try:
                    outcome = client.request(self.method, self.url, content=b"x" if self.method == "POST" else None)
                    outcome = outcome.status_code
                except httpx.TimeoutException as exc:
                    outcome = f"timeout: {exc!r}"
                except httpx.TransportError as exc:
                    outcome = f"transport: {exc!r}"
                with self.lock:
                    self.outcomes.append((start, time.monotonic(), outcome))

    def count(self) -> int:
        with self.lock:
            return len(self.outcomes)

    def wait_for(self, more: int, timeout: float = 30.0) -> None:
        target = self.count() + more
        wait_until(lambda: self.count() >= target, timeout, f"{more} more answers under load")


def test_sigkill_of_one_of_three_replicas_under_load_fails_no_idempotent_request(
    server: RunningServer, trio: str
) -> None:
    pids = replica_pids(server, NAME)
    victim = pids[0]
    with Load(f"{trio}/slow/0.02", "GET", 6) as gets, Load(f"{trio}/slow/0.02", "POST", 2) as posts:
        gets.wait_for(60)
        posts.wait_for(10)
        killed = time.monotonic()  # before the kill: a client thread may see its 502 first
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: not alive(victim), 10, "the killed replica to be gone")
        gets.wait_for(150)
        posts.wait_for(20)
    get_outcomes = [outcome for _, _, outcome in gets.outcomes]
    assert set(get_outcomes) == {200}, [o for o in get_outcomes if o != 200][:5]
    # a POST the killed replica held is not sent again (it may have run): 502, nothing else
    failed_posts = [(end, outcome) for _, end, outcome in posts.outcomes if outcome != 200]
    assert {outcome for _, outcome in failed_posts} <= {502}, failed_posts
    assert len(failed_posts) <= 2, failed_posts  # at most one in flight per POST client
    assert all(end >= killed for end, _ in failed_posts)
    print(f"{len(get_outcomes)} GETs all 200, {len(posts.outcomes)} POSTs of which {len(failed_posts)} got 502")
    # the agent starts the slot again and the gateway uses the new replica
    wait_until(lambda: len(set(replica_pids(server, NAME)) - {victim}) == 3, 60, "the slot started again")
    wait_until(lambda: len(sockets(server, NAME)) == 3, 60, "its socket")


def test_a_killed_gateway_under_load_serves_again(server: RunningServer, trio: str) -> None:
    """Clients that wait for connections (the server keeps the gateway's listening socket, so the
    kernel queues them while the gateway starts again) get their answers; the gap is printed (a
    figure, not an assertion: CI machines are slow and noisy)."""
    old = server.gateway_pid()
    assert old is not None
    with Load(f"{trio}/", "GET", 4) as gets:
        gets.wait_for(40)
        os.kill(old, signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: server.gateway_pid() not in (None, old), 30, "a new gateway")
        gets.wait_for(40)
    after = [(start, end, outcome) for start, end, outcome in gets.outcomes if end >= killed]
    served = sorted(end for start, end, outcome in after if outcome == 200 and start >= killed)
    assert served, after[:5]
    failed = [outcome for _, _, outcome in after if outcome != 200]
    print(f"gateway answering again {served[0] - killed:.3f} s after SIGKILL under load; {len(failed)} failed")
    # a request the killed gateway held is lost with its connection; none is answered wrongly
    assert all(isinstance(outcome, str) for outcome in failed), failed
    assert len(failed) <= 4, failed


def test_a_draining_replica_gets_no_new_requests(server: RunningServer, trio: str) -> None:
    """Scaled from three to one: the two drained replicas remove their sockets at once, and every
    request during and after the change is answered."""
    with Load(f"{trio}/slow/0.01", "GET", 4) as gets:
        gets.wait_for(20)
        deploy(server, NAME, 1)
        gets.wait_for(40)
    assert {outcome for _, _, outcome in gets.outcomes} == {200}
    assert len(sockets(server, NAME)) == 1
