"""moto's standalone S3 server on 127.0.0.1, a real S3-compatible HTTP endpoint for the
s3:// fetch tests (moto is a dev dependency; its server is a separate process)."""

from __future__ import annotations

import contextlib
import http.client
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.conftest import wait_until
from tests.integration.processes import free_port, stop

CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
         "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


@dataclass
class S3:
    endpoint: str

    @property
    def env(self) -> dict[str, str]:
        """What `modelservice fetch` needs in its environment to reach this server."""
        return {**CREDS, "AWS_ENDPOINT_URL": self.endpoint}

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDS["AWS_DEFAULT_REGION"],
        )

    def upload_dir(self, bucket: str, prefix: str, root: Path) -> None:
        client = self.client()
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            client.put_object(
                Bucket=bucket,
                Key=prefix + path.relative_to(root).as_posix(),
                Body=path.read_bytes(),
            )


@contextlib.contextmanager
def s3_server(log_dir: Path) -> Iterator[S3]:
    port = free_port()
    log = (log_dir / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            return True  # it exited: said below, at once rather than at the deadline
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/")
            return conn.getresponse().status < 500
        except OSError:
            return False

    try:
        wait_until(f"moto's S3 server on {endpoint}", up, timeout=60, interval=0.2)
        assert proc.poll() is None, f"moto's server exited: {(log_dir / 'moto.log').read_text()}"
        yield S3(endpoint)
    finally:
        stop(proc)
        log.close()
