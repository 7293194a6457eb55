"""One screen on three engines: molecules/s on this machine's local engine (one process) and on
Ray with one and with two nodes (started with `ray start`, one CPU each), in one run so the
ratios share the machine's load; the driver's peak memory for two library sizes; every output
checked row for row against the local one; and the per-core rate behind the estimate for 10^9
molecules.

Run: .venv/bin/python -m benchmarks.bench_screen_engines [--registry registry] [--molecules 200000]
     [--shards 8] [--endpoints solubility,bbb_penetration,tpsa] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ensure_registry, rss_mb


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def make_library(folder: Path, molecules: int, shards: int, corpus: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    per = molecules // shards
    for shard in range(shards):
        with open(folder / f"part{shard:02d}.smi", "w") as handle:
            for i in range(per):
                number = shard * per + i
                handle.write(f"{corpus[number % len(corpus)]} MOL{number:09d}\n")
    return folder


def run_screen(registry: Path, library: Path, output: Path, endpoints: str, shard_size: int,
               *options: str, kill=None) -> dict:
    """`molserve predict` as a user runs it: wall time, the driver's peak RSS, its summary."""
    command = [sys.executable, "-m", "molserve", "--registry", str(registry), "predict", str(library),
               "-o", f"{output}/", "--endpoints", endpoints, "--id-col", "name", "--format", "csv",
               "--shard-size", str(shard_size), "--quiet", *options]
    load_before = loadavg()
    started = time.perf_counter()
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    killed_processes = None
    while process.poll() is None:
        try:
            peak = max(peak, rss_mb(process.pid))
        except OSError:
            pass
        journal = output / "shards.jsonl"
        if kill is not None and killed_processes is None and journal.exists() and journal.read_text():
            killed_processes = kill()
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    stderr = process.stderr.read()
    if process.returncode != 0:
        raise RuntimeError(stderr[-3000:])
    summary = json.loads(stderr.strip().splitlines()[-1])
    manifest = json.loads((output / "manifest.json").read_text())
    busy = sum(s["seconds"] for s in manifest["shards"])
    cpu = sum(s["cpu_seconds"] for s in manifest["shards"])
    return {"molecules": summary["molecules"], "wall_s": round(seconds, 1),
            "molecules_per_s_wall": round(summary["molecules"] / seconds, 1),
            "molecules_per_s_scoring": round(summary["molecules"] / summary["seconds"], 1),
            "per_worker_molecules_per_s": round(summary["molecules"] / busy, 1),
            "molecules_per_cpu_second": round(summary["molecules"] / cpu, 1),
            "driver_peak_rss_mb": round(peak, 1), "loadavg_before": load_before, "loadavg_after": loadavg(),
            **({"node_processes_killed": killed_processes} if kill is not None else {})}


def merged(folder: Path) -> str:
    from molserve.operations.sharded import write_csv

    target = folder.with_suffix(".csv")
    write_csv(folder, target)
    return target.read_text()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", type=Path, default=Path("registry"))
    parser.add_argument("--molecules", type=int, default=200_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--endpoints", default="solubility,bbb_penetration,tpsa")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--skip-ensure", action="store_true", help="use the registry as it is")
    args = parser.parse_args()
    registry = args.registry if args.skip_ensure else ensure_registry(args.registry)
    from molserve.models.transformer.corpus import read_corpus
    from tests.ray_nodes import LocalRayCluster

    corpus = read_corpus("moses")
    shard_size = args.molecules // args.shards
    results: dict = {"molecules": args.molecules, "shards": args.shards, "endpoints": args.endpoints,
                     "cpus": len(os.sched_getaffinity(0))}
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        root = Path(tmp)
        library = make_library(root / "library", args.molecules, args.shards, corpus)
        small = make_library(root / "small", args.molecules // 4, args.shards // 4 or 1, corpus)
        results["local_1_process"] = run_screen(registry, library, root / "local", args.endpoints, shard_size,
                                                "--engine", "local", "--jobs", "1")
        reference = merged(root / "local")
        cluster = LocalRayCluster(root / "ray").start()
        try:
            results["ray_1_node"] = run_screen(registry, library, root / "ray1", args.endpoints, shard_size,
                                               "--engine", "ray", "--address", cluster.address, "--jobs", "1")
            results["ray_1_node"]["same_rows_as_local"] = merged(root / "ray1") == reference
            cluster.add_node(1)
            cluster.wait_for_nodes(2)
            results["ray_2_nodes"] = run_screen(registry, library, root / "ray2", args.endpoints,
                                                shard_size, "--engine", "ray", "--address", cluster.address,
                                                "--jobs", "2")
            results["ray_2_nodes"]["same_rows_as_local"] = merged(root / "ray2") == reference
            results["ray_2_nodes_quarter_library"] = run_screen(
                registry, small, root / "ray2small", args.endpoints, shard_size, "--engine", "ray",
                "--address", cluster.address, "--jobs", "2")
            # The second node killed (SIGKILL) once the first shard is recorded: the screen must
            # still finish with every shard recorded once and the local rows.
            killed = run_screen(registry, library, root / "ray2kill", args.endpoints, shard_size,
                                "--engine", "ray", "--address", cluster.address, "--jobs", "2",
                                kill=lambda: cluster.kill_node(1))
            journal = (root / "ray2kill" / "shards.jsonl").read_text().splitlines()
            indices = sorted(json.loads(line)["index"] for line in journal)
            killed["shards_recorded_once"] = indices == list(range(args.shards))
            killed["same_rows_as_local"] = merged(root / "ray2kill") == reference
            results["ray_2_nodes_worker_killed"] = killed
        finally:
            cluster.stop()
    one, two = results["ray_1_node"], results["ray_2_nodes"]
    results["ratios"] = {
        "ray_2_nodes_over_1_node_wall": round(two["molecules_per_s_wall"] / one["molecules_per_s_wall"], 2),
        "ray_1_node_over_local_wall": round(one["molecules_per_s_wall"]
                                            / results["local_1_process"]["molecules_per_s_wall"], 2),
        "driver_rss_full_over_quarter_library": round(
            two["driver_peak_rss_mb"] / results["ray_2_nodes_quarter_library"]["driver_peak_rss_mb"], 2)}
    # The per-core rate: molecules per CPU-second of the scoring workers (wall time on a shared
    # machine measures the other tenants as much as the screen).
    per_core = results["local_1_process"]["molecules_per_cpu_second"]
    results["estimate_1e9"] = estimate(per_core)
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def estimate(per_core: float, cores: int = 1024, usd_per_core_hour: float = 0.04) -> dict:
    """10^9 molecules on `cores` cores at the measured per-core rate (no scaling loss assumed:
    shards are independent), at an on-demand CPU price per core-hour stated here."""
    core_hours = 1e9 / per_core / 3600
    return {"per_core_molecules_per_s": per_core, "core_hours": round(core_hours, 1), "cores": cores,
            "hours_on_cluster": round(core_hours / cores, 2), "usd_per_core_hour": usd_per_core_hour,
            "usd": round(core_hours * usd_per_core_hour, 0)}


if __name__ == "__main__":
    main()
