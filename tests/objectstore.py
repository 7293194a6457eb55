"""A local S3-compatible server for the tests: moto's standalone server (`moto_server`, from
PyPI's `moto[server]`), a separate process on a free loopback port, reached by s3fs through the
usual AWS variables exactly as a real S3 endpoint would be. Chosen because it installs from the
package registry with pip (no binary download) and implements the S3 REST calls s3fs makes
(put, get, list, delete, multipart)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


class S3Server:
    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to reach the server as its S3."""
        return {"AWS_ACCESS_KEY_ID": "molserve-test", "AWS_SECRET_ACCESS_KEY": "molserve-test",
                "AWS_DEFAULT_REGION": "eu-west-1", "AWS_ENDPOINT_URL": self.endpoint}

    def start(self) -> S3Server:
        command = str(Path(sys.executable).with_name("moto_server"))
        self.process = subprocess.Popen([command, "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(self.endpoint, timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.2)
        return self

    def bucket(self, name: str) -> str:
        """A new bucket; its URL."""
        import s3fs

        fs = s3fs.S3FileSystem(key="molserve-test", secret="molserve-test",
                               client_kwargs={"endpoint_url": self.endpoint, "region_name": "eu-west-1"})
        fs.mkdir(name)
        return f"s3://{name}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def use(server: S3Server) -> dict[str, str]:
    """Point this process's s3fs at the server (returns the previous values to restore)."""
    previous = {k: os.environ.get(k, "") for k in server.env}
    os.environ.update(server.env)
    return previous
