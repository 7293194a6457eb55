"""Screens by shard: the same answers on every engine as the one-file screen, resume after a
kill without a lost or doubled shard, worker-side filters and top-k, progress, and the Modal
engine through its local execution path and a fake of its map handle. (The Ray engine on a
real two-node cluster: tests/test_screen_ray.py.)"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from molserve.errors import Conflict, InvalidInput
from molserve.operations.library import plan_shards, read_records
from molserve.operations.screen import screen_file
from molserve.operations.sharded import (
    JOURNAL,
    MANIFEST,
    LocalEngine,
    ScreenPlan,
    ShardScorer,
    prepare,
    screen_library,
    screen_to_file,
    write_csv,
)

ENDPOINTS = ["solubility", "bbb_penetration", "tpsa"]
CORPUS = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "not_a_smiles(", "CCN(CC)CC", "O=C(O)CCl",
          "c1ccc2ccccc2c1", "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "OCC(O)CO", "C1CCNCC1", "Clc1ccc(Cl)cc1",
          "CCCCCCCCCCCCCCCC(=O)O", "N#Cc1ccccc1", "CN1CCC[C@H]1c1cccnc1"]


def library(folder: Path, files: int = 3, per_file: int = 70) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        with open(folder / f"part{f}.smi", "w") as handle:
            handle.write("smiles name\n")
            for i in range(per_file):
                number = f * per_file + i
                handle.write(f"{CORPUS[number % len(CORPUS)]} MOL{number:05d}\n")
    return folder


def concatenated(folder: Path, target: Path) -> Path:
    """The library as one file, for the one-file screen to compare against."""
    with open(target, "w") as out:
        out.write("smiles name\n")
        for path in sorted(folder.glob("*.smi")):
            out.writelines(path.read_text().splitlines(keepends=True)[1:])
    return target


@pytest.fixture(scope="module")
def reference(trained_registry, tmp_path_factory):
    """A clean one-file screen of the library (the answers every engine must give)."""
    root = tmp_path_factory.mktemp("reference")
    lib = library(root / "lib")
    expected = root / "expected.csv"
    screen_file(concatenated(lib, root / "all.smi"), expected, registry=trained_registry.root,
                endpoints=ENDPOINTS, id_col="name", chunk_size=25)
    return lib, expected.read_text()


def test_the_local_engine_gives_the_one_file_screen_row_for_row(trained_registry, reference, tmp_path):
    lib, expected = reference
    for processes, output_format in ((1, "csv"), (2, "parquet")):
        folder = tmp_path / f"shards-{processes}"
        summary = screen_library(lib, folder, registry=trained_registry.root, engine=LocalEngine(processes),
                                 endpoints=ENDPOINTS, id_col="name", shard_size=40, chunk_size=25,
                                 output_format=output_format)
        assert (summary.molecules, summary.shards) == (210, 6)  # 70 a file: 40 + 30, three times
        manifest = json.loads((folder / MANIFEST).read_text())
        assert manifest["complete"] and manifest["models"] == summary.models
        assert [s["index"] for s in manifest["shards"]] == list(range(6))
        assert sum(s["rows"] for s in manifest["shards"]) == 210
        assert all(s["file"].endswith(output_format) for s in manifest["shards"])
        write_csv(folder, tmp_path / "merged.csv")
        assert (tmp_path / "merged.csv").read_text() == expected


def test_a_library_read_in_shards_gives_every_record_once(tmp_path):
    lib = library(tmp_path / "lib", files=2, per_file=23)
    shards = plan_shards(sorted(str(p) for p in lib.glob("*.smi")), 5)
    assert [s.records for s in shards] == [5, 5, 5, 5, 3] * 2
    from molserve.operations.library import read_shard

    numbered = [(s.first_row + i, r.smiles) for s in shards for i, r in enumerate(read_shard(s))]
    whole = [r.smiles for p in sorted(lib.glob("*.smi")) for r in read_records(str(p))]
    assert [n for n, _ in numbered] == list(range(46))
    assert [smiles for _, smiles in numbered] == whole


def test_a_gzipped_file_and_a_glob_are_libraries_too(trained_registry, reference, tmp_path):
    import gzip

    lib, expected = reference
    for path in sorted(lib.glob("*.smi")):
        (tmp_path / "gz").mkdir(exist_ok=True)
        with gzip.open(tmp_path / "gz" / (path.name + ".gz"), "wb") as handle:
            handle.write(path.read_bytes())
    out = tmp_path / "out.csv"
    screen_to_file(str(tmp_path / "gz" / "*.smi.gz"), out, registry=trained_registry.root,
                   engine=LocalEngine(1), endpoints=ENDPOINTS, id_col="name", shard_size=32, chunk_size=25)
    assert out.read_text() == expected
    assert not (tmp_path / "out.csv.shards").exists()


class Stopped(Exception):
    pass


class StopsAfter:
    """An engine that dies after yielding `shards` shards (a driver killed mid-screen)."""

    def __init__(self, shards: int) -> None:
        self.inner = LocalEngine(1)
        self.name = "local"
        self.shards = shards
        self.scored: list[int] = []

    def run(self, registry, plan, shards):
        for count, output in enumerate(self.inner.run(registry, plan, shards)):
            if count == self.shards:
                raise Stopped()
            self.scored.append(output.index)
            yield output


def test_a_screen_stopped_mid_way_resumes_by_shard_without_losing_or_doubling_any(
        trained_registry, reference, tmp_path):
    lib, expected = reference
    folder = tmp_path / "shards"
    options = {"registry": trained_registry.root, "endpoints": ENDPOINTS, "id_col": "name",
               "shard_size": 40, "chunk_size": 25, "output_format": "parquet"}
    first = StopsAfter(2)
    with pytest.raises(Stopped):
        screen_library(lib, folder, engine=first, **options)
    assert len((folder / JOURNAL).read_text().splitlines()) == 2
    # A shard file whose bytes no longer match its checksum is scored again.
    damaged = folder / json.loads((folder / JOURNAL).read_text().splitlines()[1])["file"]
    damaged.write_bytes(damaged.read_bytes()[:-10] + b"0123456789")
    second = StopsAfter(100)
    summary = screen_library(lib, folder, engine=second, **options)
    assert summary.shards_resumed == 1
    assert sorted(first.scored[:1] + second.scored) == list(range(6))  # each shard scored once more at most
    assert first.scored[1] in second.scored
    write_csv(folder, tmp_path / "merged.csv")
    assert (tmp_path / "merged.csv").read_text() == expected
    third = StopsAfter(100)  # a finished screen run again scores nothing
    assert screen_library(lib, folder, engine=third, **options).shards_resumed == 6 and third.scored == []


def test_an_output_folder_of_another_screen_is_refused(trained_registry, reference, tmp_path):
    lib, _ = reference
    folder = tmp_path / "shards"
    screen_library(lib, folder, registry=trained_registry.root, engine=LocalEngine(1),
                   endpoints=["tpsa"], shard_size=100)
    with pytest.raises(Conflict, match="another screen"):
        screen_library(lib, folder, registry=trained_registry.root, engine=LocalEngine(1),
                       endpoints=["solubility"], shard_size=100)


def test_a_killed_cli_screen_started_again_finishes_with_the_clean_answer(trained_registry, reference,
                                                                         tmp_path):
    """The driver process is killed (SIGKILL) once some shards are recorded; the same command
    run again scores only the rest and the file equals the clean screen's."""
    lib, expected = reference
    out = tmp_path / "hits.csv"
    command = [sys.executable, "-m", "molserve", "--registry", str(trained_registry.root), "predict",
               str(lib), "-o", str(out), "--endpoints", ",".join(ENDPOINTS), "--id-col", "name",
               "--shard-size", "10", "--chunk-size", "25", "--jobs", "1", "--quiet"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    journal = tmp_path / "hits.csv.shards" / JOURNAL
    deadline = time.monotonic() + 120
    while not (journal.exists() and len(journal.read_text().splitlines()) >= 3):
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    recorded = len(journal.read_text().splitlines())
    assert 3 <= recorded < 21 and not out.exists()
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stderr.strip().splitlines()[-1])
    assert summary["shards_resumed"] >= recorded and summary["molecules"] == 210
    assert out.read_text() == expected


def test_where_and_top_k_run_on_the_workers_and_only_hits_come_back(trained_registry, reference, tmp_path):
    lib, expected = reference
    every = list(csv.DictReader(expected.splitlines()))
    folder = tmp_path / "hits"
    summary = screen_library(lib, folder, registry=trained_registry.root, engine=LocalEngine(1),
                             endpoints=ENDPOINTS, id_col="name", shard_size=40,
                             where="tpsa < 40 and bbb_penetration_label == 'BBB+'", output_format="csv")
    wanted = [r for r in every
              if r["tpsa"] and float(r["tpsa"]) < 40 and r["bbb_penetration_label"] == "BBB+"]
    assert 0 < len(wanted) < len(every)
    assert summary.hits == len(wanted) and summary.molecules == len(every)
    write_csv(folder, tmp_path / "hits.csv")
    assert list(csv.DictReader(open(tmp_path / "hits.csv"))) == wanted
    shard_rows = sum(len((folder / s["file"]).read_text().splitlines()) - 1
                     for s in json.loads((folder / MANIFEST).read_text())["shards"])
    assert shard_rows == len(wanted)  # the shards hold hits only

    top = tmp_path / "top.csv"
    screen_to_file(lib, top, registry=trained_registry.root, engine=LocalEngine(2), endpoints=ENDPOINTS,
                   shard_size=40, top_k=3, rank_by="solubility,-tpsa")
    rows = list(csv.DictReader(open(top)))
    readable = [r for r in every if r["solubility"]]
    best = sorted(readable, key=lambda r: (-float(r["solubility"]), int(r["row"])))[:3]
    lowest = sorted(readable, key=lambda r: (float(r["tpsa"]), int(r["row"])))[:3]
    assert [r["row"] for r in rows] == sorted({r["row"] for r in best + lowest}, key=int)


@pytest.mark.parametrize("where, message", [
    ("solubility >", "cannot read"), ("nonsense > 1", "no column 'nonsense'"),
    ("__import__('os').system('true')", "is not a column"), ("solubility + 1 > 2", "is not a column")])
def test_a_bad_filter_is_refused_before_any_shard_is_scored(trained_registry, reference, tmp_path,
                                                           where, message):
    lib, _ = reference
    with pytest.raises(InvalidInput, match=message):
        prepare(lib, registry=trained_registry.root, endpoints=ENDPOINTS, where=where)


def test_progress_counts_shards_molecules_rate_and_eta(trained_registry, reference, tmp_path):
    lib, _ = reference
    seen = []
    screen_library(lib, tmp_path / "s", registry=trained_registry.root, engine=LocalEngine(1),
                   endpoints=["tpsa"], shard_size=50, on_progress=seen.append)
    assert [p.shards_done for p in seen] == list(range(len(seen)))
    assert seen[-1].shards_done == seen[-1].shards_total == 6 and seen[-1].molecules_done == 210
    assert seen[0].molecules_per_second is None and seen[-1].molecules_per_second > 0
    assert seen[-1].eta_s == 0 and seen[1].eta_s > 0


def test_cli_writes_a_shard_folder_and_refuses_bad_options_in_one_line(trained_registry, reference,
                                                                      tmp_path):
    lib, expected = reference
    base = [sys.executable, "-m", "molserve", "--registry", str(trained_registry.root), "predict", str(lib)]
    run = subprocess.run([*base, "-o", f"{tmp_path}/results/", "--endpoints", ",".join(ENDPOINTS),
                          "--id-col", "name", "--shard-size", "100", "--jobs", "2"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stderr.strip().splitlines()[-1])
    assert (summary["engine"], summary["shards"], summary["molecules"]) == ("local", 3, 210)
    manifest = json.loads((tmp_path / "results" / MANIFEST).read_text())
    assert [s["file"] for s in manifest["shards"]] == [f"part-0000{i}.parquet" for i in range(3)]
    write_csv(tmp_path / "results", tmp_path / "merged.csv")
    assert (tmp_path / "merged.csv").read_text() == expected
    for options, message in [
            (["-o", "x.csv", "--where", "nope < 1"], "--where: no column 'nope'"),
            (["-o", "x.csv", "--address", "10.0.0.1:6379"], "--address names a Ray cluster"),
            (["-o", "x.parquet"], "write a .csv or .sdf file, or a folder"),
            (["-o", "x.sdf"], "SDF output needs SDF input")]:
        bad = subprocess.run([*base, *options], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("molserve: error: ")
        assert message in bad.stderr and "Traceback" not in bad.stderr


# Modal ------------------------------------------------------------------------------------------
@pytest.fixture
def modal_screen(trained_registry, tmp_path, monkeypatch):
    """The Modal app's module with its mounts pointed at this machine's registry and a results
    folder, and the results Volume replaced by a fake that counts commits."""
    pytest.importorskip("modal")
    import molserve.deploy.modal_screen as module

    commits: list[int] = []
    monkeypatch.setattr(module, "REGISTRY_MOUNT", str(trained_registry.root))
    monkeypatch.setattr(module, "RESULTS_MOUNT", str(tmp_path / "volume"))
    monkeypatch.setattr(module, "results_volume", types.SimpleNamespace(commit=lambda: commits.append(1)))
    return module, commits


def test_the_modal_class_scores_a_shard_through_its_local_execution_path(modal_screen, reference, tmp_path):
    module, commits = modal_screen
    lib, _ = reference
    plan, _, shards = prepare(lib, registry=Path(module.REGISTRY_MOUNT), endpoints=ENDPOINTS,
                              id_col="name", shard_size=40, output_format="csv")
    screener = module.ShardScreener(plan_json=json.dumps(plan.to_json()), screen="s1")
    item = next(module.map_inputs(shards[3:4]))
    assert item["payload"] is not None  # a local file travels with its shard
    with pytest.warns(UserWarning, match="executing locally"):
        output = screener.score.local(item)
    here = ShardScorer(Path(module.REGISTRY_MOUNT), plan)(shards[3])
    assert output["data"] == here.data and output["rows"] == 30 and output["index"] == 3
    assert (tmp_path / "volume" / "s1" / "part-00003.csv").read_bytes() == here.data
    assert commits == [1]


class FakeMapHandle:
    """`modal.Cls.from_name(app, "ShardScreener")(...)` as far as the engine uses it: the method's
    `.map(inputs, order_outputs=False)`, here answering out of order through the local path."""

    def __init__(self, module, registry: Path) -> None:
        self.module = module
        self.registry = registry
        self.calls: list[dict] = []
        self.closed = False

    def from_name(self, app: str, name: str):
        self.calls.append({"app": app, "name": name})
        return self

    def __call__(self, plan_json: str, screen: str):
        self.calls.append({"plan_json": plan_json, "screen": screen})
        scorer = ShardScorer(self.registry, ScreenPlan.from_json(json.loads(plan_json)))
        handle = self

        def mapped(inputs, order_outputs=True):
            handle.calls.append({"order_outputs": order_outputs})
            items = list(inputs)
            try:
                for item in reversed(items):  # completion order is not input order
                    yield handle.module.score_input(scorer, item, None, screen)
            finally:
                handle.closed = True

        return types.SimpleNamespace(score=types.SimpleNamespace(map=mapped))


def test_the_modal_engine_maps_over_shards_and_gives_the_local_answer(modal_screen, reference, tmp_path,
                                                                     monkeypatch):
    module, _ = modal_screen
    lib, expected = reference
    fake = FakeMapHandle(module, Path(module.REGISTRY_MOUNT))
    monkeypatch.setattr(module.modal, "Cls", fake)
    out = tmp_path / "hits.csv"
    summary = screen_to_file(lib, out, registry=Path(module.REGISTRY_MOUNT),
                             engine=module.ModalScreenEngine("my-screens"), endpoints=ENDPOINTS,
                             id_col="name", shard_size=40, chunk_size=25)
    assert summary.engine == "modal" and summary.shards == 6
    assert fake.calls[0] == {"app": "my-screens", "name": "ShardScreener"}
    assert fake.calls[2] == {"order_outputs": False} and fake.closed
    assert out.read_text() == expected


def test_a_cancelled_modal_screen_closes_its_map(modal_screen, reference, tmp_path, monkeypatch):
    module, _ = modal_screen
    lib, _ = reference
    fake = FakeMapHandle(module, Path(module.REGISTRY_MOUNT))
    monkeypatch.setattr(module.modal, "Cls", fake)

    def cancel(progress):
        if progress.shards_done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        screen_library(lib, tmp_path / "s", registry=Path(module.REGISTRY_MOUNT),
                       engine=module.ModalScreenEngine(), endpoints=["tpsa"], shard_size=40,
                       on_progress=cancel)
    assert fake.closed
    assert len((tmp_path / "s" / JOURNAL).read_text().splitlines()) == 2


# Jobs ---------------------------------------------------------------------------------------------
def test_a_screen_job_by_shard_reports_progress_and_resumes_after_a_kill(trained_registry, reference,
                                                                        tmp_path):
    from molserve.jobs.store import SQLiteJobStore

    lib, expected = reference
    source = concatenated(lib, tmp_path / "all.smi")
    jobs = tmp_path / "jobs"
    store = SQLiteJobStore(jobs / "jobs.sqlite3")
    job = store.create("screen", {"input_path": str(source), "endpoints": ENDPOINTS, "id_col": "name",
                                  "engine": "local", "output_format": "parquet", "shard_size": 10,
                                  "chunk_size": 25})
    store.claim_queued()
    command = [sys.executable, "-m", "molserve.jobs.execute", "--job", job["id"], "--jobs-dir", str(jobs),
               "--registry", str(trained_registry.root), "--datasets", str(tmp_path / "datasets")]
    process = subprocess.Popen(command, start_new_session=True)
    deadline = time.monotonic() + 120
    while (store.get(job["id"])["metrics"] or {}).get("shards_done", 0) < 3:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    status = store.get(job["id"])
    assert status["metrics"]["shards_total"] == 21 and status["metrics"]["molecules_total"] == 210
    assert status["metrics"]["molecules_per_second"] > 0 and status["eta_s"] is not None
    assert subprocess.run(command, timeout=300).returncode == 0
    done = store.get(job["id"])
    assert done["state"] == "succeeded", done
    assert done["result"]["shards_resumed"] >= 3 and done["result"]["molecules"] == 210
    assert done["metrics"]["shards_done"] == 21
    assert Path(done["result"]["path"]).read_text() == expected


def test_a_filter_compares_values_and_fails_on_missing_ones():
    from molserve.operations.where import compile_where

    columns = ["solubility", "bbb_penetration_label", "solubility_in_domain", "tpsa"]
    keep = compile_where("solubility > -5 and (bbb_penetration_label in ['BBB+'] "
                         "or not solubility_in_domain)", columns)
    assert keep({"solubility": -3.0, "bbb_penetration_label": "BBB+", "solubility_in_domain": True})
    assert keep({"solubility": "-3.0", "bbb_penetration_label": "BBB-", "solubility_in_domain": "False"})
    assert not keep({"solubility": -6.0, "bbb_penetration_label": "BBB+", "solubility_in_domain": True})
    assert not keep({"solubility": "", "bbb_penetration_label": "BBB+", "solubility_in_domain": True})
    assert compile_where("-1 < tpsa <= 20.23", columns)({"tpsa": 20.23})
    assert not compile_where("tpsa", columns)({"tpsa": ""})  # a missing value is not true


def test_a_library_behind_an_fsspec_url_is_read_through_fsspec(trained_registry, reference, tmp_path):
    fsspec = pytest.importorskip("fsspec")
    lib, expected = reference
    memory = fsspec.filesystem("memory")
    for path in sorted(lib.glob("*.smi")):
        memory.pipe(f"/screens-test/{path.name}", path.read_bytes())
    try:
        out = tmp_path / "out.csv"
        screen_to_file("memory://screens-test/*.smi", out, registry=trained_registry.root,
                       engine=LocalEngine(1), endpoints=ENDPOINTS, id_col="name", shard_size=50,
                       chunk_size=25)
        assert out.read_text() == expected
    finally:
        memory.rm("/screens-test", recursive=True)
