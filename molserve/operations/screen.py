"""Screening a file: every record predicted from the registry into a CSV, in chunks.

One implementation serves `molserve predict` and screen jobs. Memory stays bounded whatever the
file's size (a chunk at a time, at most 2 x processes chunks in flight), rows come out in input
order, and the output appears under its final name only when complete (it is written as
`<name>.partial` first). With `durable=True` (jobs) each chunk is fsynced before `on_chunk`
reports its checkpoint, so a screen killed at any moment resumes from its last checkpoint
(`resume=`) without losing or repeating a row.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from molserve.errors import InvalidInput, NotFound
from molserve.operations.library import Record, format_of, read_records


def iter_smiles(path: Path, smiles_col: str | None = None) -> Iterator[str]:
    """SMILES of each record of a CSV/TSV (by column), SMI/TXT (first field) or SDF file."""
    for record in read_records(str(path), smiles_col=smiles_col):
        yield record.smiles


def _count_records(path: Path) -> int | None:
    if format_of(str(path)) == "sdf" or str(path).lower().endswith(".gz"):
        return None
    with open(path, "rb") as handle:
        lines = sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
    return max(0, lines - (1 if format_of(str(path)) == "table" else 0))


def _columns(endpoints: list[str], computed: set[str], classification: set[str],
             id_col: str | None = None, explain: bool = False,
             percentiles: frozenset[str] = frozenset()) -> list[str]:
    columns = ["row", "input", "canonical_smiles", "error"]
    if id_col:
        if id_col in columns or id_col in endpoints:
            raise InvalidInput(f"the ID column {id_col!r} has the name of an output column; rename it "
                               "in the input", code="id_column_clash")
        columns.insert(1, id_col)
    for name in endpoints:
        if name in computed:
            columns.append(name)
            if name in percentiles:
                columns.append(f"{name}_percentile")
            continue
        columns.append(name)
        if name in percentiles:
            columns.append(f"{name}_percentile")
        if name in classification:
            columns.append(f"{name}_label")
        columns += [f"{name}_std", f"{name}_lower", f"{name}_upper", f"{name}_in_domain",
                    f"{name}_max_similarity", f"{name}_model"]
        if explain:
            columns.append(f"{name}_explanation")
    return columns


def _flatten(result: dict[str, Any], offset: int, endpoints: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"row": offset + result["index"], "input": result["input"],
                           "canonical_smiles": result["canonical_smiles"] or "",
                           "error": result["error"] or ""}
    for name in endpoints:
        answer = result["predictions"].get(name)
        if answer is None:
            continue
        if answer.is_error:
            row[name] = ""
            continue
        value = answer.value
        if isinstance(value, list):
            value = "; ".join(f"{a['catalog']}:{a['description']}" for a in value)
        row[name] = value
        if answer.reference_percentile is not None:
            row[f"{name}_percentile"] = answer.reference_percentile
        if answer.kind == "computed":
            continue
        if answer.label is not None:
            row[f"{name}_label"] = answer.label
        if answer.uncertainty is not None:
            row[f"{name}_std"] = answer.uncertainty.std
            row[f"{name}_lower"], row[f"{name}_upper"] = answer.uncertainty.interval
        if answer.applicability_domain is not None:
            row[f"{name}_in_domain"] = answer.applicability_domain.in_domain
            row[f"{name}_max_similarity"] = answer.applicability_domain.max_similarity
        prov = answer.provenance
        row[f"{name}_model"] = f"{prov.model_id}@v{prov.version}"
        if answer.explanation is not None:  # the numbers as JSON; the drawing stays out of a CSV
            import json

            row[f"{name}_explanation"] = json.dumps(
                {k: v for k, v in answer.explanation.items() if k != "svg"}, separators=(",", ":"))
    return row


@dataclass(frozen=True)
class Checkpoint:
    """How far a durable screen got: rows written and the output's size after them."""

    rows_done: int
    bytes: int
    errors: int


@dataclass(frozen=True)
class ScreenSummary:
    molecules: int
    errors: int
    endpoints: list[str]
    processes: int
    seconds: float
    molecules_per_second: float | None
    output: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_worker_router = None


def _worker_init(registry: str, chunk_size: int, only: list[str] | None,
                 reference: str | None = None) -> None:
    global _worker_router
    from molserve.prediction.router import Router
    from molserve.registry.store import Registry

    _worker_router = Router(Registry(registry), max_batch=chunk_size)
    _worker_router.load(only=only)
    if reference is not None:  # the values were computed and stored by the parent
        from molserve.prediction.reference import ReferenceSets

        _worker_router.references = ReferenceSets(_worker_router.registry, _worker_router,
                                                  default=reference)


Rendered = tuple[list[list[Any]], int, int]


# A cell starting with one of these is run as a formula by spreadsheet programs.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: Any) -> Any:
    """Text a spreadsheet would run as a formula (an input line `=HYPERLINK(...)` echoed back),
    prefixed with an apostrophe so it shows as text; numbers are left as they are."""
    if isinstance(cell, str) and cell.startswith(_FORMULA_START):
        return "'" + cell
    return cell


def _render(router, chunk: list[Record], names: list[str], columns: list[str],
            id_col: str | None = None, explain: bool = False,
            confidence: float | None = None) -> Rendered:
    """Predict one chunk into CSV rows (row numbers within the chunk; the writer shifts them)."""
    response = router.predict_local([record.smiles for record in chunk], names, explain=explain,
                                    confidence=confidence)
    rows = []
    for result in response["results"]:
        flat = _flatten(result, 0, names)
        if id_col:
            flat[id_col] = chunk[result["index"]].identifier or ""
        rows.append([spreadsheet_safe(flat.get(c, "")) for c in columns])
    return rows, response["n_molecules"], response["n_errors"]


def _worker_render(chunk: list[Record], names: list[str], columns: list[str],
                   id_col: str | None, explain: bool = False, confidence: float | None = None) -> Rendered:
    assert _worker_router is not None
    return _render(_worker_router, chunk, names, columns, id_col, explain, confidence)


def _chunks(items: Iterator[Record], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _rendered_chunks(router, chunks: Iterator[list[Record]], names: list[str], columns: list[str], *,
                     registry: Path, chunk_size: int, endpoints: list[str] | None,
                     processes: int, id_col: str | None = None,
                     explain: bool = False, reference: str | None = None,
                     confidence: float | None = None) -> Iterator[Rendered]:
    """Rendered chunks in input order, predicted here or by `processes` worker processes."""
    if processes <= 1:
        for chunk in chunks:
            yield _render(router, chunk, names, columns, id_col, explain, confidence)
        return
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    global _worker_router
    if "fork" in multiprocessing.get_all_start_methods():
        # Forked workers inherit the loaded models: no start-up cost per worker.
        _worker_router = router
        pool_args: dict[str, Any] = {"mp_context": multiprocessing.get_context("fork")}
    else:
        pool_args = {"mp_context": multiprocessing.get_context("spawn"), "initializer": _worker_init,
                     "initargs": (str(registry), chunk_size, endpoints, reference)}
    with ProcessPoolExecutor(processes, **pool_args) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.submit(_worker_render, chunk, names, columns, id_col, explain, confidence))
            if len(pending) >= 2 * processes:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def screen_file(
    source: Path,
    destination: Path,
    *,
    registry: Path,
    endpoints: list[str] | None = None,
    smiles_col: str | None = None,
    id_col: str | None = None,
    explain: bool = False,
    reference: str | None = None,
    confidence: float | None = None,
    chunk_size: int = 1000,
    processes: int = 1,
    durable: bool = False,
    resume: Checkpoint | None = None,
    on_start: Callable[[int | None, list[str]], None] | None = None,
    on_chunk: Callable[[Checkpoint, int | None], None] | None = None,
) -> ScreenSummary:
    """Predict every record of `source` (CSV/TSV/SMI/SDF, gzipped or not) into the CSV
    `destination`; with `id_col` the input's identifier (a CSV column, an SDF property or
    `_Name`, a SMILES file's second field) is kept in a column of that name. With `explain`,
    each predicted endpoint's explanation (per-atom and per-descriptor contributions, as JSON)
    is written in `<endpoint>_explanation`, in chunks of at most the router's explained batch.
    With `reference` (a reference set's name), each numeric endpoint's percentile within that
    set is written in `<endpoint>_percentile` (the set's values computed once, first).
    `confidence` (0.8, 0.9 or 0.95) is the level of the `<endpoint>_lower`/`_upper` intervals.

    `on_start(total_records_or_None, endpoints)` is called once before the first chunk;
    `on_chunk(checkpoint, total)` after each chunk is written (and, with `durable`, fsynced), so
    a caller can show progress, record the checkpoint, or stop the screen by raising.
    `resume` continues a durable screen from its checkpoint (the partial output must exist).
    """
    from molserve.prediction.router import Router
    from molserve.registry.store import Registry

    if not source.is_file():
        raise NotFound(f"no such file: {source}")
    router = Router(Registry(registry), max_batch=chunk_size)
    if explain:
        chunk_size = min(chunk_size, router.max_explained)
    router.load(only=endpoints)
    if not router.predicted_endpoints and endpoints is None:
        raise NotFound(f"no models in {registry}; run `molserve bootstrap` first", code="no_models")
    names = router.resolve_endpoints(endpoints)
    computed = set(router.computed.endpoints())
    classification = {n for n, m in router.fast.models.items() if m.task == "classification"}
    percentiles: frozenset[str] = frozenset()
    if reference is not None:
        from molserve.chem.descriptors import COMPUTED
        from molserve.prediction.reference import ReferenceSets

        router.references = ReferenceSets(router.registry, router, default=reference)
        numeric = [n for n in names if n not in computed or COMPUTED[n].numeric]
        router.references.refresh(reference, numeric)  # here, before any worker is forked
        percentiles = frozenset(numeric)
    columns = _columns(names, computed, classification, id_col, explain, percentiles)
    partial = destination.with_name(destination.name + ".partial")
    done = errors = 0
    if resume is not None and resume.rows_done and partial.exists():
        with open(partial, "r+b") as handle:  # drop anything written after the checkpoint
            handle.truncate(resume.bytes)
        done, errors = resume.rows_done, resume.errors
    else:
        with open(partial, "w", newline="") as handle:
            csv.writer(handle).writerow(columns)
    total = _count_records(source)
    if on_start is not None:
        on_start(total, names)
    started = time.perf_counter()
    screened_here = 0

    def remaining() -> Iterator[Record]:
        for position, record in enumerate(read_records(str(source), smiles_col=smiles_col,
                                                       id_col=id_col)):
            if position >= done:
                yield record

    chunks = _chunks(remaining(), chunk_size)
    with open(partial, "a", newline="") as out:
        writer = csv.writer(out)
        for rows, n_molecules, n_errors in _rendered_chunks(
                router, chunks, names, columns, registry=registry, chunk_size=chunk_size,
                endpoints=endpoints, processes=processes, id_col=id_col, explain=explain,
                reference=reference, confidence=confidence):
            for row in rows:
                row[0] += done  # rows are numbered within their chunk
            writer.writerows(rows)
            out.flush()
            if durable:
                os.fsync(out.fileno())
            done += n_molecules
            errors += n_errors
            screened_here += n_molecules
            if on_chunk is not None:
                on_chunk(Checkpoint(rows_done=done, bytes=out.tell(), errors=errors), total)
    partial.replace(destination)
    seconds = time.perf_counter() - started
    return ScreenSummary(molecules=done, errors=errors, endpoints=names, processes=processes,
                         seconds=round(seconds, 3),
                         molecules_per_second=round(screened_here / seconds, 1) if seconds else None,
                         output=str(destination))
