"""A real PostgreSQL server for the tests: Debian's binaries (`/usr/lib/postgresql/<v>/bin`),
a cluster in a temporary folder on a free loopback port, started once and stopped at the end. As
root (CI), the server runs as the `postgres` user (PostgreSQL refuses root), through `runuser`."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path


def binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


class PostgresServer:
    def __init__(self) -> None:
        bin_dir = binaries()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL's server binaries are not installed")
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="molserve-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.data = self.root / "data"

    def start(self) -> PostgresServer:
        subprocess.run(_as_server_user([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust",
                                        "-U", "molserve", "--no-sync"]),
                       check=True, capture_output=True)
        subprocess.run(_as_server_user([
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w",
            "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                  "-c max_connections=200", "start"]), check=True, capture_output=True)
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://molserve@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database's URL (one per test that needs a clean store)."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(_as_server_user([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                                        "stop"]), capture_output=True)
        for _ in range(50):
            if not (self.data / "postmaster.pid").exists():
                break
            time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)
