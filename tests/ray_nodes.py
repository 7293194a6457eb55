"""A Ray cluster of real nodes on this machine, started with `ray start` (a head, then more nodes
joining it), each node's processes found by its own ports and temporary folder so that it can be
killed alone, and the whole cluster stopped without touching any other Ray on the machine
(`ray stop` would stop them all)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        found[int(entry.name)] = (parent, command)
    return found


def _with_descendants(roots: set[int], table: dict[int, tuple[int, str]]) -> set[int]:
    chosen = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, (parent, _) in table.items():
            if parent in chosen and pid not in chosen:
                chosen.add(pid)
                grew = True
    return chosen


class LocalRayCluster:
    """`ray start --head` in `folder`, plus nodes added with `add_node`; `kill_node(i)` kills a
    node (its raylet and everything under it) with SIGKILL, `stop()` kills the whole cluster."""

    def __init__(self, folder: Path, head_cpus: int = 1) -> None:
        self.folder = folder
        self.temp_dir = folder / "ray"
        self.port = _free_port()
        self.node_ports: list[int] = []
        # The nodes do not see this checkout (no PYTHONPATH): the code they run is what the
        # driver ships in its runtime_env.
        self.env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                    "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
        self.head_cpus = head_cpus
        self.ip = None

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    def _start(self, *args: str) -> str:
        out = subprocess.run([RAY, "start", *args], env=self.env, capture_output=True, text=True,
                             timeout=180)
        if out.returncode != 0:
            raise RuntimeError(f"ray start failed: {out.stdout[-2000:]}{out.stderr[-2000:]}")
        return out.stdout + out.stderr

    def start(self) -> LocalRayCluster:
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        manager = _free_port()
        self.node_ports.append(manager)
        printed = self._start("--head", f"--port={self.port}", f"--num-cpus={self.head_cpus}",
                    f"--temp-dir={self.temp_dir}", "--include-dashboard=false",
                    f"--dashboard-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
                    f"--node-manager-port={manager}", "--disable-usage-stats")
        # The nodes join at the address the head printed (its GCS listens on the node's IP).
        match = re.search(r"Local node IP: ([0-9.]+)", printed)
        self.ip = match.group(1) if match else "127.0.0.1"
        return self

    def add_node(self, cpus: int = 1) -> int:
        manager = _free_port()
        self.node_ports.append(manager)
        self._start(f"--address={self.address}", f"--num-cpus={cpus}", f"--node-manager-port={manager}",
                    "--disable-usage-stats")
        return len(self.node_ports) - 1

    def wait_for_nodes(self, count: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self.raylets()) >= count:
                return
            time.sleep(0.5)
        raise TimeoutError(f"{count} Ray nodes did not come up")

    def raylets(self) -> dict[int, int]:
        """node number -> raylet pid."""
        table = _processes()
        found = {}
        for number, port in enumerate(self.node_ports):
            for pid, (_, command) in table.items():
                if "raylet/raylet" in command and f"--node_manager_port={port}" in command:
                    found[number] = pid
        return found

    def node_processes(self, number: int) -> set[int]:
        table = _processes()
        raylet = self.raylets().get(number)
        return _with_descendants({raylet}, table) if raylet else set()

    def kill_node(self, number: int) -> int:
        victims = self.node_processes(number)
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(victims)

    def shipped_packages(self) -> list[Path]:
        """The packages drivers shipped to the nodes in their runtime_env (`py_modules`)."""
        return sorted(p for p in self.temp_dir.glob("session_*/runtime_resources/py_modules_files/_ray_pkg_*")
                      if p.is_dir())

    def stop(self) -> None:
        """Every process of this cluster: those naming its folder or port, and their children."""
        table = _processes()
        roots = {pid for pid, (_, command) in table.items()
                 if str(self.temp_dir) in command or f":{self.port}" in command
                 or any(f"--node_manager_port={p}" in command for p in self.node_ports)}
        roots.discard(os.getpid())
        for pid in _with_descendants(roots, table) - {os.getpid()}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
