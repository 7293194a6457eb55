"""Screens by shard: one library, any engine (this machine's processes, a Ray cluster, Modal),
the same answers, checkpoints and progress.

The driver (`screen_library`) plans the library's shards (`operations.library`), pins the
registry versions it will use, and hands the shards still to do to an engine. An engine maps
`ShardScorer` over them wherever it runs (each worker loads the fast tier once, from the same
registry versions) and yields each scored shard as it completes, in any order: its rows encoded
as Parquet or CSV, filtered (`where`) and cut to the shard's top-k on the worker, so only hits
travel back. The driver alone writes the output folder: each shard file atomically (written
aside, fsynced, renamed), then one line in the journal `shards.jsonl` with its row count and
SHA-256. A screen killed at any point and started again with the same output reads the journal,
keeps the shards whose files match their checksums and scores only the others: no shard is lost
or counted twice, and the result is row for row the clean run's. `manifest.json` lists the
shards, their counts and checksums and the model versions once the screen completes.

Engines implement one method, `run(registry, plan, shards) -> iterator of ShardOutput`. The
local one is here; the Ray and Modal ones live in `molserve.deploy` (`ray_screen`,
`modal_screen`), above this layer, and the faces (CLI, jobs) pass the chosen one in.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import heapq
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from molserve.errors import Conflict, InvalidInput, NotFound, Unavailable
from molserve.operations.library import Record, Shard, check_columns, library_files, plan_shards, read_shard
from molserve.operations.screen import _columns, _render
from molserve.operations.where import compile_where

FORMATS = ("parquet", "csv")
MANIFEST = "manifest.json"
JOURNAL = "shards.jsonl"


@dataclass(frozen=True)
class ScreenPlan:
    """What every worker needs to score a shard exactly as every other: the endpoints and
    columns, the model versions pinned by the driver, the filter and the output format."""

    requested: list[str] | None
    endpoints: list[str]
    columns: list[str]
    models: dict[str, int]
    smiles_col: str | None = None
    id_col: str | None = None
    where: str | None = None
    top_k: int | None = None
    rank_by: list[str] = field(default_factory=list)
    output_format: str = "parquet"
    chunk_size: int = 1000

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScreenPlan:
        return cls(**data)


@dataclass(frozen=True)
class ShardOutput:
    """A scored shard: `rows` molecules read, `kept` of them in `data` (the encoded file);
    `seconds` of wall time and `cpu_seconds` of the worker's CPU time (a per-core rate that a
    busy machine does not distort)."""

    index: int
    rows: int
    kept: int
    errors: int
    data: bytes
    seconds: float
    cpu_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ScreenProgress:
    shards_done: int
    shards_total: int
    molecules_done: int
    molecules_total: int
    hits: int
    molecules_per_second: float | None
    eta_s: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LibrarySummary:
    molecules: int
    hits: int
    errors: int
    shards: int
    shards_resumed: int
    endpoints: list[str]
    engine: str
    seconds: float
    molecules_per_second: float | None
    output: str
    models: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ShardEngine(Protocol):
    name: str

    def run(self, registry: Path, plan: ScreenPlan, shards: list[Shard]) -> Iterator[ShardOutput]:
        """Score `shards`; yield each as it completes (any order); stop the work when closed."""
        ...


# Scoring (on the workers) -----------------------------------------------------------------------
def _load_router(registry: Path, requested: list[str] | None, chunk_size: int):
    from molserve.prediction.router import Router
    from molserve.registry.store import Registry

    router = Router(Registry(registry), max_batch=chunk_size)
    router.load(only=requested)
    return router


def model_versions(router) -> dict[str, int]:
    return {name: model.artifact.version for name, model in sorted(router.fast.models.items())}


def pinned_artifacts(registry: Path, plan: ScreenPlan) -> list[Path]:
    """The artifact folders (relative to the registry) of the versions a plan pins."""
    return [Path(endpoint) / f"v{version}" for endpoint, version in plan.models.items()
            if (registry / endpoint / f"v{version}").is_dir()]


class ShardScorer:
    """Scores shards with the fast tier, loaded once; refuses to score with other model
    versions than the plan pins (a registry updated mid-screen would mix answers)."""

    def __init__(self, registry: Path | str, plan: ScreenPlan) -> None:
        self.plan = plan
        self.router = _load_router(Path(registry), plan.requested, plan.chunk_size)
        found = model_versions(self.router)
        if found != plan.models:
            raise Conflict(f"the registry at {registry} serves {found}, not the versions this screen "
                           f"started with ({plan.models}); finish it with those or start a new one",
                           code="model_versions_changed")
        self.keep = compile_where(plan.where, plan.columns) if plan.where else None

    def __call__(self, shard: Shard) -> ShardOutput:
        started = time.perf_counter()
        cpu_started = time.process_time()
        records = read_shard(shard, smiles_col=self.plan.smiles_col, id_col=self.plan.id_col)
        rows: list[list[Any]] = []
        errors = 0
        for start in range(0, len(records), self.plan.chunk_size):
            chunk: list[Record] = records[start:start + self.plan.chunk_size]
            rendered, _, n_errors = _render(self.router, chunk, self.plan.endpoints, self.plan.columns,
                                            self.plan.id_col)
            errors += n_errors
            for row in rendered:
                row[0] += shard.first_row + start
                if self.keep is None or self.keep(dict(zip(self.plan.columns, row, strict=True))):
                    rows.append(row)
        if self.plan.top_k:
            rows = top_k_rows(rows, self.plan.columns, self.plan.rank_by, self.plan.top_k)
        data = encode(rows, self.plan.columns, self.plan.output_format)
        return ShardOutput(shard.index, len(records), len(rows), errors, data,
                           round(time.perf_counter() - started, 3),
                           round(time.process_time() - cpu_started, 3))


def parse_rank_by(rank_by: str | list[str] | None, plan_columns: list[str],
                  default: list[str]) -> list[str]:
    """`solubility,-herg_inhibition`: rank by solubility (highest first) and by hERG (lowest)."""
    names = ([n.strip() for n in rank_by.replace(" ", ",").split(",") if n.strip()]
             if isinstance(rank_by, str) else list(rank_by or default))
    for name in names:
        if name.lstrip("-") not in plan_columns:
            raise InvalidInput(f"--rank-by: no column {name.lstrip('-')!r} to rank by",
                               code="invalid_rank_by")
    return names


def _rank_value(cell: Any) -> float | None:
    if cell is None or cell == "" or isinstance(cell, bool):
        return None
    try:
        return float(cell)
    except (TypeError, ValueError):
        return None


def top_k_rows(rows: list[list[Any]], columns: list[str], rank_by: list[str], k: int) -> list[list[Any]]:
    """The rows among the `k` best of any ranked column (ties to the earlier row), in row order."""
    chosen: dict[int, list[Any]] = {}
    for spec in rank_by:
        at = columns.index(spec.lstrip("-"))
        sign = 1.0 if spec.startswith("-") else -1.0  # smallest key first
        scored = [(sign * v, int(row[0]), row) for row in rows if (v := _rank_value(row[at])) is not None]
        for _, number, row in heapq.nsmallest(k, scored, key=lambda t: (t[0], t[1])):
            chosen[number] = row
    return [chosen[n] for n in sorted(chosen)]


# Encoding --------------------------------------------------------------------------------------
def encode(rows: list[list[Any]], columns: list[str], output_format: str) -> bytes:
    if output_format == "csv":
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(columns)
        writer.writerows(rows)
        return text.getvalue().encode()
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = []
    for at in range(len(columns)):
        values = [None if row[at] == "" else row[at] for row in rows]
        kinds = {type(v) for v in values if v is not None}
        if len(kinds) > 1:  # one column, one type: mixed cells keep their text
            values = [None if v is None else str(v) for v in values]
        arrays.append(pa.array(values))
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_arrays(arrays, names=columns), sink, compression="zstd")
    return sink.getvalue()


def decode(data: bytes, output_format: str) -> tuple[list[str], Iterator[list[Any]]]:
    """Columns and rows of an encoded shard (missing cells as "", as the CSV has them)."""
    if output_format == "csv":
        reader = csv.reader(io.StringIO(data.decode()))
        return next(reader), reader
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    columns = [c.to_pylist() for c in table.columns]

    def rows() -> Iterator[list[Any]]:
        for at in range(table.num_rows):
            yield ["" if c[at] is None else c[at] for c in columns]

    return table.column_names, rows()


def require_format(output_format: str) -> None:
    if output_format not in FORMATS:
        raise InvalidInput(f"--format: use one of {', '.join(FORMATS)}", code="invalid_format")
    if output_format == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise Unavailable("Parquet output needs pyarrow (pip install 'molserve[train]'); or "
                              "ask for --format csv", code="pyarrow_missing") from None


# The local engine ---------------------------------------------------------------------------------
_local_scorer: ShardScorer | None = None


def _local_init(registry: str, plan: dict[str, Any]) -> None:
    global _local_scorer
    _local_scorer = ShardScorer(registry, ScreenPlan.from_json(plan))


def _local_score(shard: Shard) -> ShardOutput:
    assert _local_scorer is not None
    return _local_scorer(shard)


class LocalEngine:
    """This machine: `processes` worker processes, each loading the models once."""

    name = "local"

    def __init__(self, processes: int = 1) -> None:
        self.processes = max(1, processes)

    def run(self, registry: Path, plan: ScreenPlan, shards: list[Shard]) -> Iterator[ShardOutput]:
        if self.processes <= 1 or len(shards) <= 1:
            scorer = ShardScorer(registry, plan)
            for shard in shards:
                yield scorer(shard)
            return
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(min(self.processes, len(shards)),
                                 mp_context=multiprocessing.get_context(method),
                                 initializer=_local_init, initargs=(str(registry), plan.to_json())) as pool:
            todo = iter(shards)
            pending = set()
            try:
                for shard in todo:  # at most two shards a process in flight: memory stays flat
                    pending.add(pool.submit(_local_score, shard))
                    if len(pending) >= 2 * self.processes:
                        break
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield future.result()
                        following = next(todo, None)
                        if following is not None:
                            pending.add(pool.submit(_local_score, following))
            finally:
                for future in pending:
                    future.cancel()


# The driver -------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _write_atomic(path: Path, data: bytes) -> None:
    aside = path.with_name(f".{path.name}.writing")
    with open(aside, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    aside.replace(path)
    _fsync_dir(path.parent)


def shard_file(index: int, output_format: str) -> str:
    return f"part-{index:05d}.{output_format}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plan_key(plan: ScreenPlan, shards: list[Shard]) -> str:
    text = json.dumps({"plan": plan.to_json(), "shards": [s.to_json() for s in shards]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def completed_shards(folder: Path, plan_key: str) -> dict[int, dict[str, Any]]:
    """The shards a previous run of the same screen finished: journalled, and whose files are
    there with their recorded checksums (a torn last journal line is ignored)."""
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        return {}
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return {}
    if manifest.get("plan_key") != plan_key:
        raise Conflict(f"{folder} holds another screen's shards (other input, endpoints, filter, "
                       "format or model versions); choose another output or delete it",
                       code="output_holds_another_screen")
    done: dict[int, dict[str, Any]] = {}
    journal = folder / JOURNAL
    if journal.exists():
        for line in journal.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            path = folder / entry["file"]
            if path.exists() and path.stat().st_size == entry["bytes"] and _sha256(path) == entry["sha256"]:
                done[entry["index"]] = entry
    return done


def _stats(entries: Iterable[dict[str, Any]]) -> tuple[int, int, int]:
    rows = kept = errors = 0
    for entry in entries:
        rows += entry["rows"]
        kept += entry["kept"]
        errors += entry["errors"]
    return rows, kept, errors


def prepare(source: str | Path, *, registry: Path, endpoints: list[str] | None = None,
            smiles_col: str | None = None, id_col: str | None = None, where: str | None = None,
            top_k: int | None = None, rank_by: str | list[str] | None = None,
            output_format: str = "parquet", chunk_size: int = 1000,
            shard_size: int = 100_000) -> tuple[ScreenPlan, list[str], list[Shard]]:
    """The plan, files and shards of a screen, with every option checked before any work."""
    require_format(output_format)
    if shard_size < 1:
        raise InvalidInput("--shard-size must be at least 1", code="invalid_shard_size")
    if top_k is not None and top_k < 1:
        raise InvalidInput("--top-k must be at least 1", code="invalid_top_k")
    files = library_files(source)
    for path in files:
        check_columns(path, smiles_col, id_col)
    router = _load_router(registry, endpoints, chunk_size)
    if not router.predicted_endpoints and endpoints is None:
        raise NotFound(f"no models in {registry}; run `molserve bootstrap` first", code="no_models")
    names = router.resolve_endpoints(endpoints)
    computed = set(router.computed.endpoints())
    classification = {n for n, m in router.fast.models.items() if m.task == "classification"}
    columns = _columns(names, computed, classification, id_col)
    if where:
        compile_where(where, columns)  # refused here, before any shard is scored
    ranked: list[str] = []
    if top_k:
        default = [n for n in names if n in router.fast.models and n not in classification]
        ranked = parse_rank_by(rank_by, columns, default or names)
    plan = ScreenPlan(requested=endpoints, endpoints=names, columns=columns,
                      models=model_versions(router), smiles_col=smiles_col, id_col=id_col,
                      where=where or None, top_k=top_k, rank_by=ranked, output_format=output_format,
                      chunk_size=chunk_size)
    return plan, files, plan_shards(files, shard_size)


def screen_library(
    source: str | Path,
    folder: Path,
    *,
    registry: Path,
    engine: ShardEngine,
    endpoints: list[str] | None = None,
    smiles_col: str | None = None,
    id_col: str | None = None,
    where: str | None = None,
    top_k: int | None = None,
    rank_by: str | list[str] | None = None,
    output_format: str = "parquet",
    chunk_size: int = 1000,
    shard_size: int = 100_000,
    on_progress: Callable[[ScreenProgress], None] | None = None,
) -> LibrarySummary:
    """Screen the library `source` into the shard folder `folder` on `engine`, resuming the
    shards a killed run of the same screen left complete. `on_progress` is called once before
    the first shard and after each shard is recorded; raising from it stops the engine."""
    plan, files, shards = prepare(source, registry=registry, endpoints=endpoints, smiles_col=smiles_col,
                                  id_col=id_col, where=where, top_k=top_k, rank_by=rank_by,
                                  output_format=output_format, chunk_size=chunk_size,
                                  shard_size=shard_size)
    folder.mkdir(parents=True, exist_ok=True)
    key = _plan_key(plan, shards)
    done = completed_shards(folder, key)
    if not (folder / MANIFEST).exists() or not done:
        (folder / JOURNAL).unlink(missing_ok=True)
        _write_atomic(folder / MANIFEST, json.dumps(
            {"plan_key": key, "complete": False, "plan": plan.to_json(), "library": files,
             "shards_total": len(shards), "molecules_total": sum(s.records for s in shards)},
            indent=1).encode())
    total = sum(s.records for s in shards)
    todo = [s for s in shards if s.index not in done]
    resumed = len(done)
    rows, kept, errors = _stats(done.values())
    started = time.perf_counter()
    screened_here = 0

    def report() -> None:
        if on_progress is None:
            return
        seconds = time.perf_counter() - started
        rate = screened_here / seconds if screened_here and seconds > 0 else None
        eta = (total - rows) / rate if rate else None
        on_progress(ScreenProgress(len(done), len(shards), rows, total, kept,
                                   round(rate, 1) if rate else None,
                                   round(eta, 3) if eta is not None else None))

    report()
    if todo:
        by_index = {s.index: s for s in todo}
        with open(folder / JOURNAL, "a") as journal, contextlib.closing(
                iter(engine.run(registry, plan, todo))) as outputs:
            for output in outputs:
                shard = by_index.pop(output.index, None)
                if shard is None:  # an engine that retried a shard already recorded
                    continue
                name = shard_file(output.index, plan.output_format)
                _write_atomic(folder / name, output.data)
                entry = {"index": output.index, "file": name, "shard": shard.to_json(), "rows": output.rows,
                         "kept": output.kept, "errors": output.errors, "bytes": len(output.data),
                         "sha256": hashlib.sha256(output.data).hexdigest(), "seconds": output.seconds,
                         "cpu_seconds": output.cpu_seconds}
                journal.write(json.dumps(entry) + "\n")
                journal.flush()
                os.fsync(journal.fileno())
                done[output.index] = entry
                rows += output.rows
                kept += output.kept
                errors += output.errors
                screened_here += output.rows
                report()
        if by_index:
            raise Unavailable(f"the {engine.name} engine stopped with {len(by_index)} shards unscored; "
                              "run the same command again to finish them", code="screen_incomplete")
    seconds = time.perf_counter() - started
    manifest = {"plan_key": key, "complete": True, "engine": engine.name, "plan": plan.to_json(),
                "models": plan.models, "library": files, "format": plan.output_format,
                "shards_total": len(shards), "molecules_total": total, "molecules": rows,
                "hits": kept, "errors": errors,
                "shards": [done[s.index] for s in shards]}
    _write_atomic(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
    return LibrarySummary(molecules=rows, hits=kept, errors=errors, shards=len(shards),
                          shards_resumed=resumed, endpoints=plan.endpoints, engine=engine.name,
                          seconds=round(seconds, 3),
                          molecules_per_second=round(screened_here / seconds, 1) if seconds else None,
                          output=str(folder), models=plan.models)


# One file from the shards -------------------------------------------------------------------------
def _manifest(folder: Path) -> dict[str, Any]:
    manifest = json.loads((folder / MANIFEST).read_text())
    if not manifest.get("complete"):
        raise Conflict(f"{folder} holds an unfinished screen", code="screen_incomplete")
    return manifest


def merged_rows(folder: Path) -> tuple[list[str], Iterator[list[Any]]]:
    """Every kept row of a finished shard folder in input order; with top-k, the k best of the
    whole library for each ranked column (the shards hold each shard's k best)."""
    manifest = _manifest(folder)
    plan = ScreenPlan.from_json(manifest["plan"])

    def shard_rows() -> Iterator[list[Any]]:
        for entry in manifest["shards"]:
            _, rows = decode((folder / entry["file"]).read_bytes(), plan.output_format)
            yield from rows

    if not plan.top_k:
        return plan.columns, shard_rows()
    candidates = list(shard_rows())  # at most k x ranked columns x shards rows
    return plan.columns, iter(top_k_rows(candidates, plan.columns, plan.rank_by, plan.top_k))


def write_csv(folder: Path, destination: Path) -> int:
    columns, rows = merged_rows(folder)
    partial = destination.with_name(destination.name + ".partial")
    count = 0
    with open(partial, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(row)
            count += 1
    partial.replace(destination)
    return count


def _sdf_value(cell: Any) -> str:
    return "" if cell is None else str(cell).replace("\n", " ")


def write_sdf(folder: Path, destination: Path) -> int:
    """The input's SDF records that were kept, in input order, each with the predictions as
    data items (the `input` column is the record itself, so it is not repeated)."""
    manifest = _manifest(folder)
    plan = ScreenPlan.from_json(manifest["plan"])
    columns, rows = merged_rows(folder)
    kept = iter(rows)
    pending = next(kept, None)
    partial = destination.with_name(destination.name + ".partial")
    count = 0
    with open(partial, "w") as out:
        for entry in manifest["shards"]:
            shard = Shard.from_json(entry["shard"])
            for offset, record in enumerate(read_shard(shard, id_col=plan.id_col)):
                if pending is None:
                    break
                if int(pending[0]) != shard.first_row + offset:
                    continue
                lines = (record.block or "").rstrip().splitlines()
                while lines and (lines[-1].startswith("$$$$") or not lines[-1].strip()):
                    lines.pop()
                # The record's own data items end with a blank line, as each item must.
                ends_with_item = bool(lines) and not lines[-1].startswith("M  END")
                out.write("\n".join(lines) + ("\n\n" if ends_with_item else "\n"))
                for name, cell in zip(columns, pending, strict=True):
                    if name not in ("input", plan.id_col):  # both are in the record itself
                        out.write(f">  <{name}>\n{_sdf_value(cell)}\n\n")
                out.write("$$$$\n")
                count += 1
                pending = next(kept, None)
    partial.replace(destination)
    return count


def screen_to_file(source: str | Path, destination: Path, *, registry: Path, engine: ShardEngine,
                   **options: Any) -> LibrarySummary:
    """A sharded screen whose output is one file, CSV or SDF, in input order: the shards are
    kept in `<destination>.shards/` until the file is written (so a killed run resumes)."""
    if destination.suffix.lower() in {".sdf", ".sd"}:
        from molserve.operations.library import format_of

        if any(format_of(p) != "sdf" for p in library_files(source)):
            raise InvalidInput("SDF output needs SDF input (its records are written back with the "
                               "predictions as properties); write CSV for other inputs",
                               code="sdf_output_needs_sdf_input")
    folder = destination.with_name(destination.name + ".shards")
    options = {**options, "output_format": "csv"}
    summary = screen_library(source, folder, registry=registry, engine=engine, **options)
    if destination.suffix.lower() in {".sdf", ".sd"}:
        write_sdf(folder, destination)
    else:
        write_csv(folder, destination)
    shutil.rmtree(folder, ignore_errors=True)
    return LibrarySummary(**{**summary.to_json(), "output": str(destination)})
