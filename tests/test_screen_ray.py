"""The Ray engine on a real two-node Ray cluster on this machine (a head and a second node, each
started with `ray start`): the same rows as the local screen, and a worker node killed mid-run
still gives every shard exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from molserve.operations.sharded import JOURNAL, MANIFEST, write_csv
from tests.ray_nodes import LocalRayCluster

pytest.importorskip("ray.data")
pytestmark = pytest.mark.slow

ENDPOINTS = "solubility,bbb_penetration,tpsa"
SHARDS, PER_SHARD = 8, 800


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """8 files of 800 molecules (from the bundled TDC files), each molecule named."""
    import csv
    from pathlib import Path

    import molserve

    pool = []
    for path in sorted((Path(molserve.__file__).parent / "data" / "tdc" / "extra").glob("*.csv")):
        pool += [row["Drug"] for row in csv.DictReader(open(path))]
    pool = list(dict.fromkeys(pool))
    folder = tmp_path_factory.mktemp("library")
    for shard in range(SHARDS):
        with open(folder / f"part{shard}.smi", "w") as handle:
            for i in range(PER_SHARD):
                number = shard * PER_SHARD + i
                handle.write(f"{pool[number % len(pool)]} MOL{number:06d}\n")
    return folder


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    nodes = LocalRayCluster(tmp_path_factory.mktemp("ray")).start()
    try:
        nodes.add_node(1)
        nodes.wait_for_nodes(2)
        yield nodes
    finally:
        nodes.stop()


def predict(registry, library, output, *options):
    return [sys.executable, "-m", "molserve", "--registry", str(registry), "predict", str(library), "-o",
            str(output), "--endpoints", ENDPOINTS, "--id-col", "name", "--shard-size", str(PER_SHARD),
            "--quiet", *options]


@pytest.fixture(scope="module")
def local_answer(trained_registry, library, tmp_path_factory):
    folder = tmp_path_factory.mktemp("local")
    done = subprocess.run(predict(trained_registry.root, library, f"{folder}/shards/", "--engine", "local",
                                  "--format", "csv"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    write_csv(folder / "shards", folder / "local.csv")
    text = (folder / "local.csv").read_text()
    assert len(text.splitlines()) == SHARDS * PER_SHARD + 1
    return text


def test_two_ray_nodes_give_the_local_rows(trained_registry, library, cluster, local_answer, tmp_path):
    done = subprocess.run(predict(trained_registry.root, library, f"{tmp_path}/shards/", "--engine", "ray",
                                  "--address", cluster.address, "--jobs", "2"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stderr.strip().splitlines()[-1])
    assert (summary["engine"], summary["shards"], summary["molecules"]) == ("ray", SHARDS, SHARDS * PER_SHARD)
    manifest = json.loads((tmp_path / "shards" / MANIFEST).read_text())
    assert manifest["models"] == summary["models"] and len(manifest["shards"]) == SHARDS
    write_csv(tmp_path / "shards", tmp_path / "merged.csv")
    assert (tmp_path / "merged.csv").read_text() == local_answer
    # The nodes run without this checkout on their path: molserve reached them in the runtime_env.
    assert any((p / "molserve" / "operations" / "sharded.py").exists() for p in cluster.shipped_packages())


def _map_workers(cluster) -> list[int]:
    from tests.ray_nodes import _processes

    table = _processes()
    ours = set().union(*(cluster.node_processes(n) for n in range(len(cluster.node_ports))))
    return [pid for pid in ours if "MapWorker" in table.get(pid, (0, ""))[1]]


def _screen_job(trained_registry, library, cluster, tmp_path):
    import os

    from molserve.jobs.store import SQLiteJobStore

    source = tmp_path / "library.smi"
    source.write_text("".join(p.read_text() for p in sorted(library.glob("*.smi"))))
    jobs = tmp_path / "jobs"
    store = SQLiteJobStore(jobs / "jobs.sqlite3")
    job = store.create("screen", {"input_path": str(source), "endpoints": ENDPOINTS.split(","),
                                  "id_col": "name", "engine": "ray", "shard_size": PER_SHARD})
    store.claim_queued()
    command = [sys.executable, "-m", "molserve.jobs.execute", "--job", job["id"], "--jobs-dir", str(jobs),
               "--registry", str(trained_registry.root), "--datasets", str(tmp_path / "datasets")]
    env = {**os.environ, "MOLSERVE_RAY_ADDRESS": cluster.address}
    return store, job["id"], subprocess.Popen(command, env=env)


def test_a_screen_job_on_ray_reports_shards_and_gives_the_local_rows(trained_registry, library, cluster,
                                                                    local_answer, tmp_path):
    store, job_id, process = _screen_job(trained_registry, library, cluster, tmp_path)
    assert process.wait(timeout=600) == 0
    job = store.get(job_id)
    assert job["state"] == "succeeded", job
    assert job["result"]["engine"] == "ray" and job["result"]["shards"] == SHARDS
    assert job["metrics"]["shards_done"] == job["metrics"]["shards_total"] == SHARDS
    assert job["metrics"]["molecules_done"] == SHARDS * PER_SHARD
    assert open(job["result"]["path"]).read() == local_answer


def test_cancelling_a_screen_job_on_ray_stops_its_actors(trained_registry, library, cluster, tmp_path):
    import os
    import signal

    store, job_id, process = _screen_job(trained_registry, library, cluster, tmp_path)
    deadline = time.monotonic() + 300
    while (store.get(job_id)["metrics"] or {}).get("shards_done", 0) < 1:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    assert _map_workers(cluster)  # the pool is at work
    store.update(job_id, cancel_requested=1)  # what the runner does: the flag, then SIGTERM
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    job = store.get(job_id)
    assert job["state"] == "cancelled" and job["metrics"]["shards_done"] < SHARDS
    deadline = time.monotonic() + 60
    while _map_workers(cluster):
        assert time.monotonic() < deadline, "the cancelled screen's actors kept running"
        time.sleep(0.5)


def test_a_killed_worker_node_loses_and_doubles_nothing(trained_registry, library, cluster, local_answer,
                                                        tmp_path):
    folder = tmp_path / "shards"
    process = subprocess.Popen(predict(trained_registry.root, library, f"{folder}/", "--engine", "ray",
                                       "--address", cluster.address, "--jobs", "2"),
                               stderr=subprocess.PIPE, text=True)
    journal = folder / JOURNAL
    deadline = time.monotonic() + 300
    while not (journal.exists() and journal.read_text().strip()):
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert len(journal.read_text().splitlines()) < SHARDS
    assert cluster.kill_node(1) > 0  # the second node's raylet and its workers, with SIGKILL
    try:
        stderr = process.communicate(timeout=600)[1]
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-3000:]
    indices = [json.loads(line)["index"] for line in journal.read_text().splitlines()]
    assert sorted(indices) == list(range(SHARDS))  # every shard recorded once: none lost, none twice
    assert json.loads(stderr.strip().splitlines()[-1])["molecules"] == SHARDS * PER_SHARD
    write_csv(folder, tmp_path / "merged.csv")
    assert (tmp_path / "merged.csv").read_text() == local_answer
