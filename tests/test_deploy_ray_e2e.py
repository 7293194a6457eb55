"""A real two-node Ray cluster on this machine serves a tiny model through Ray Serve.

The head node runs from the project's environment; the two worker nodes (the only ones with the
`molserve_replica` resource, so the replica and the training task land there) run from a
virtual environment that has Ray and every dependency but not molserve, so molserve's code can
only arrive through the application's runtime_env. The gateway routes to the replica; killing
the node that hosts it has Serve start the replica on the other node while the gateway answers
every request from the fast tier, labelled degraded; a training job then runs as a Ray task on
a node without molserve installed and registers one model, naming the job.

The cluster uses its own ports and temp dir, and only its own processes are stopped.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.processes import gateway, wait_for

pytest.importorskip("ray.serve")
pytestmark = pytest.mark.slow

REPLICA = "ServeReplica:molserve:molserve-worker"
# Three nodes share this machine: a small object store each (the default takes 30% of memory).
SMALL = ["--object-store-memory", str(150 * 1024 * 1024)]


def _processes() -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace")
            except OSError:
                continue
    return found


def _environ_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def replicas(temp_dir: Path) -> dict[int, str]:
    """This cluster's replica processes, by pid, with the node hosting each (the name its
    `ray start` was given in the environment every process of the node inherits)."""
    return {pid: _environ_of(pid).get("MOLSERVE_TEST_NODE", "?")
            for pid, command in _processes().items()
            if REPLICA in command and str(temp_dir) in _environ_of(pid).get("MOLSERVE_TEST_CLUSTER", "")}


def venv_without_molserve(where: Path) -> Path:
    """A virtual environment that sees the project environment's packages, molserve excepted:
    its site-packages lists the project's as a plain path, so the .pth files there (molserve's
    editable install among them) are not run."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "project-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


# A cluster with token authentication (Ray's default for a new local cluster), with a token of
# the test's own handed to every process (nodes, probe, deploy, job) in RAY_AUTH_TOKEN: nothing is
# read from, or written to, ~/.ray/auth_token, so the test runs the same on a machine where no
# Ray cluster ever ran.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, **RAY_ENV, **extra}


def _ray(python: Path | str) -> list[str]:
    return [str(python), "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())"]


class Cluster:
    def __init__(self, root: Path, node_python: Path) -> None:
        self.root = root
        self.temp_dir = root / "ray"
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.node_python = node_python
        self.nodes: dict[str, subprocess.Popen] = {}

    def _ports(self) -> list[str]:
        return ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
                "--dashboard-agent-listen-port", str(free_port()),
                "--dashboard-agent-grpc-port", str(free_port()),
                "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]

    def start_head(self) -> None:
        # No CPUs: Serve's controller and proxy (0 CPUs each) live here, the replica cannot.
        self.nodes["head"] = subprocess.Popen(
            [*_ray(sys.executable), "start", "--head", "--block", "--port", str(self.port),
             "--temp-dir", str(self.temp_dir), "--num-cpus", "0", "--include-dashboard", "false", *SMALL,
             "--ray-client-server-port", str(free_port()), "--disable-usage-stats", *self._ports()],
            env=_clean_env(MOLSERVE_TEST_CLUSTER=str(self.temp_dir), MOLSERVE_TEST_NODE="head",
                           PYTHONPATH=str(Path(__file__).resolve().parents[1])),
            cwd=self.root, stdout=self._log("head"), stderr=subprocess.STDOUT, start_new_session=True)

    def start_node(self, name: str) -> None:
        self.nodes[name] = subprocess.Popen(
            [*_ray(self.node_python), "start", "--block", "--address", self.address,
             "--temp-dir", str(self.temp_dir), "--num-cpus", "2", *SMALL,
             "--resources", json.dumps({"molserve_replica": 1}), "--disable-usage-stats", *self._ports()],
            env=_clean_env(MOLSERVE_TEST_CLUSTER=str(self.temp_dir), MOLSERVE_TEST_NODE=name),
            cwd=self.root, stdout=self._log(name), stderr=subprocess.STDOUT, start_new_session=True)

    def _log(self, name: str):
        return open(self.root / f"{name}.log", "w")  # noqa: SIM115 (the node process owns it)

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-1500:]}" for log in self.root.glob("*.log"))

    def wait_for_nodes(self, count: int, timeout_s: float = 180) -> None:
        """Wait (in one short-lived driver) until `count` nodes are alive."""
        script = ("import ray, sys, time; ray.init(address=sys.argv[1], log_to_driver=False)\n"
                  "deadline = time.monotonic() + float(sys.argv[3])\n"
                  "while sum(n['Alive'] for n in ray.nodes()) < int(sys.argv[2]):\n"
                  "    assert time.monotonic() < deadline, ray.nodes()\n"
                  "    time.sleep(0.5)\n")
        probe = subprocess.run([sys.executable, "-c", script, self.address, str(count), str(timeout_s)],
                               env=_clean_env(), capture_output=True, text=True, timeout=timeout_s + 60,
                               cwd=self.root)
        assert probe.returncode == 0, f"fewer than {count} nodes came up: {self.logs()}"

    def kill(self, name: str) -> None:
        """SIGKILL a node: `ray start --block`, its raylet and every worker it started (one
        process group), as a machine that dies."""
        process = self.nodes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        for pid in [p for p in _processes() if _environ_of(p).get("MOLSERVE_TEST_NODE") == name
                    and _environ_of(p).get("MOLSERVE_TEST_CLUSTER") == str(self.temp_dir)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        for name in list(self.nodes):
            self.kill(name)


@contextmanager
def two_node_cluster():
    root = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))  # short: Ray's socket paths have a limit
    node_python = venv_without_molserve(root / "node-venv")
    cluster = Cluster(root, node_python)
    try:
        cluster.start_head()
        cluster.wait_for_nodes(1)
        for count, name in enumerate(("node-a", "node-b"), start=2):
            cluster.start_node(name)
            cluster.wait_for_nodes(count)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_two_node_cluster_serves_from_code_shipped_in_runtime_env_and_survives_a_node(transformer_registry):
    with two_node_cluster() as cluster:
        # The worker nodes cannot import molserve on their own.
        probe = subprocess.run(
            [str(cluster.node_python), "-c", "import ray, fastapi, torch; import molserve"],
            env=_clean_env(), cwd=cluster.root, capture_output=True, text=True)
        assert probe.returncode != 0 and "No module named 'molserve'" in probe.stderr, probe.stderr

        port = free_port()
        deploy = subprocess.Popen(
            [sys.executable, "-m", "molserve", "--registry", str(transformer_registry.root), "deploy", "ray",
             "--address", cluster.address, "--port", str(port), "--backend", "onnx", "--max-replicas", "1",
             "--resources", json.dumps({"molserve_replica": 1}),
             "--proxy-location", "HeadOnly"],
            env={**os.environ, **RAY_ENV, "MOLSERVE_WORKER_TOKEN": "t0ken"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(f"{url}/readyz", timeout_s=300, headers={"authorization": "Bearer t0ken"})
            [(first_pid, first_node)] = replicas(cluster.temp_dir).items()
            assert first_node in ("node-a", "node-b")
            with gateway(transformer_registry.root, [url]) as (base, _), httpx.Client(timeout=30) as client:
                body = {"molecules": ["CCO", "c1ccccc1O"], "endpoints": ["logbb"], "tier": "transformer"}
                deadline = time.monotonic() + 60
                while client.post(f"{base}/v1/predict", json=body).json()["tiers"]["logbb"] != "transformer":
                    assert time.monotonic() < deadline, "the gateway never routed to Ray Serve"
                    time.sleep(0.2)
                answer = client.post(f"{base}/v1/predict", json=body).json()
                provenance = answer["results"][0]["predictions"]["logbb"]["provenance"]
                assert provenance["kind"].startswith("roberta")

                cluster.kill(first_node)
                killed_at = time.monotonic()
                statuses, degraded, recovered = [], 0, None
                while time.monotonic() - killed_at < 300:
                    response = client.post(f"{base}/v1/predict", json={**body, "deadline_ms": 1000})
                    statuses.append(response.status_code)
                    answer = response.json()
                    provenance = answer["results"][0]["predictions"]["logbb"]["provenance"]
                    if answer["tiers"]["logbb"] == "fast":
                        assert provenance["degraded"] is True and provenance["degraded_reason"]
                        degraded += 1
                    elif answer["tiers"]["logbb"] == "transformer":
                        now = replicas(cluster.temp_dir)
                        assert now and set(now.values()) <= {"node-a", "node-b"} - {first_node}, now
                        recovered = time.monotonic() - killed_at
                        break
                    time.sleep(0.2)
                assert statuses and all(status == 200 for status in statuses), set(statuses)
                assert degraded > 0, "no request was answered while the replica moved"
                assert recovered is not None, "no answer from a replica on the surviving node"
                print(f"\nreplica moved from {first_node} in {recovered:.1f} s; {len(statuses)} requests, "
                      f"{degraded} answered by the fast tier, all 200; "
                      f"load {Path('/proc/loadavg').read_text().strip()}")

            # A training job as a Ray task: it lands on the surviving node (the only one with
            # CPUs), which has no molserve of its own.
            from molserve.jobs.store import SQLiteJobStore
            from molserve.registry import Registry

            registry = cluster.root / "registry"
            shutil.copytree(transformer_registry.root, registry)
            jobs = cluster.root / "jobs"
            store = SQLiteJobStore(jobs / "jobs.sqlite3")
            job = store.create("train", {"model": "transformer", "endpoint": "logbb", "base": "random:tiny",
                                         "epochs": 1, "learning_rate": 1e-3, "export_onnx": False})
            store.claim_queued()
            before = Registry(registry).latest("logbb", kind="transformer").version
            run = subprocess.run(
                [sys.executable, "-m", "molserve.jobs.execute", "--job", job["id"], "--jobs-dir", str(jobs),
                 "--registry", str(registry), "--datasets", str(jobs / "datasets")],
                env={**os.environ, **RAY_ENV, "MOLSERVE_TRAINING_BACKEND": "ray",
                     "MOLSERVE_RAY_ADDRESS": cluster.address},
                capture_output=True, text=True, timeout=400)
            final = store.get(job["id"])
            assert final["state"] == "succeeded", (final.get("error"), run.stderr[-3000:], final)
            assert final["result"]["engine"] == "ray"
            trained = Registry(registry).latest("logbb", kind="transformer")
            assert trained.version == before + 1 and trained.info.job_id == job["id"]
        finally:
            os.killpg(deploy.pid, signal.SIGTERM)
            try:
                deploy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(deploy.pid, signal.SIGKILL)
                deploy.wait()
