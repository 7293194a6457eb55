"""Offline prediction of a file from the registry, streamed in chunks (bounded memory)."""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from molserve.config import Settings


def iter_smiles(path: Path, smiles_col: str | None = None) -> Iterator[str]:
    """SMILES of each record of a CSV/TSV (by column), SMI/TXT (first field) or SDF file."""
    suffix = path.suffix.lower()
    if suffix in {".sdf", ".sd"}:
        from rdkit import Chem

        for mol in Chem.SDMolSupplier(str(path)):
            yield Chem.MolToSmiles(mol) if mol is not None else "<unreadable SDF record>"
        return
    with open(path, newline="", encoding="utf-8-sig") as handle:
        if suffix in {".csv", ".tsv"}:
            header = handle.readline()
            handle.seek(0)
            delimiter = "\t" if header.count("\t") > header.count(",") else ","
            reader = csv.DictReader(handle, delimiter=delimiter)
            fields = reader.fieldnames or []
            column = smiles_col or next((f for f in fields if f.strip().lower() == "smiles"), None)
            if column is None or column not in fields:
                raise ValueError(f"no SMILES column in {path.name} (columns: {fields}); "
                                 "name it with --smiles-col")
            for row in reader:
                yield (row.get(column) or "").strip()
            return
        first = True
        for line in handle:
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            token = stripped.split()[0]
            if first and token.lower() == "smiles":
                first = False
                continue  # a header line
            first = False
            yield token


def _count_records(path: Path) -> int | None:
    if path.suffix.lower() in {".sdf", ".sd"}:
        return None
    with open(path, "rb") as handle:
        lines = sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
    return max(0, lines - (1 if path.suffix.lower() in {".csv", ".tsv"} else 0))


def _columns(endpoints: list[str], computed: set[str], classification: set[str]) -> list[str]:
    columns = ["row", "input", "canonical_smiles", "error"]
    for name in endpoints:
        if name in computed:
            columns.append(name)
            continue
        columns.append(name)
        if name in classification:
            columns.append(f"{name}_label")
        columns += [f"{name}_std", f"{name}_lower", f"{name}_upper", f"{name}_in_domain",
                    f"{name}_max_similarity", f"{name}_model"]
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
    return row


_worker_predictor = None


def _worker_init(registry: str, chunk_size: int, only: list[str] | None) -> None:
    global _worker_predictor
    from molserve.prediction.router import Router
    from molserve.registry.store import Registry

    _worker_predictor = Router(Registry(registry), max_batch=chunk_size)
    _worker_predictor.load(only=only)


Rendered = tuple[list[list[Any]], int, int]


def _render(predictor, chunk: list[str], names: list[str], columns: list[str]) -> Rendered:
    """Predict one chunk into CSV rows (row numbers within the chunk; the writer shifts them)."""
    response = predictor.predict_local(chunk, names)
    rows = []
    for result in response["results"]:
        flat = _flatten(result, 0, names)
        rows.append([flat.get(c, "") for c in columns])
    return rows, response["n_molecules"], response["n_errors"]


def _worker_predict(chunk: list[str], names: list[str], columns: list[str]) -> Rendered:
    assert _worker_predictor is not None
    return _render(_worker_predictor, chunk, names, columns)


def _chunks(items: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict_file(
    source: Path,
    destination: Path,
    *,
    settings: Settings,
    endpoints: list[str] | None = None,
    smiles_col: str | None = None,
    chunk_size: int = 1000,
    jobs: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict every record of `source` into the CSV `destination`; return a summary.

    With `jobs` > 1, chunks are predicted by that many worker processes (each loads the
    models once); at most 2 x jobs chunks are in flight, so memory does not grow with the file,
    and rows are written in input order.
    """
    from molserve.prediction.router import Router
    from molserve.registry.store import Registry

    predictor = Router(Registry(settings.registry), max_batch=chunk_size)
    predictor.load(only=endpoints)
    if not predictor.predicted_endpoints and endpoints is None:
        raise ValueError(f"no models in {settings.registry}; run `molserve bootstrap` first")
    names = predictor.resolve_endpoints(endpoints)
    computed = set(predictor.computed.endpoints())
    classification = {n for n, m in predictor.fast.models.items() if m.task == "classification"}
    total = _count_records(source)
    bar = None
    if progress:
        from tqdm import tqdm

        tqdm.monitor_interval = 0  # no monitor thread: worker processes are forked
        bar = tqdm(total=total, unit="mol", file=sys.stderr, desc="predicting")
    started = time.perf_counter()
    done = errors = 0
    tmp = destination.with_name(destination.name + ".partial")
    columns = _columns(names, computed, classification)
    with open(tmp, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(columns)

        def write(rendered: Rendered) -> None:
            nonlocal done, errors
            rows, n_molecules, n_errors = rendered
            for row in rows:
                row[0] += done  # rows are numbered within their chunk
            writer.writerows(rows)
            errors += n_errors
            done += n_molecules
            if bar is not None:
                bar.update(n_molecules)

        chunks = _chunks(iter_smiles(source, smiles_col), chunk_size)
        if jobs <= 1:
            for chunk in chunks:
                write(_render(predictor, chunk, names, columns))
        else:
            import multiprocessing
            from collections import deque
            from concurrent.futures import ProcessPoolExecutor

            global _worker_predictor
            if "fork" in multiprocessing.get_all_start_methods():
                # Forked workers inherit the loaded models: no start-up cost per worker.
                _worker_predictor = predictor
                pool_args = {"mp_context": multiprocessing.get_context("fork")}
            else:
                pool_args = {"mp_context": multiprocessing.get_context("spawn"),
                             "initializer": _worker_init,
                             "initargs": (str(settings.registry), chunk_size, endpoints)}
            with ProcessPoolExecutor(jobs, **pool_args) as pool:
                pending: deque = deque()
                for chunk in chunks:
                    pending.append(pool.submit(_worker_predict, chunk, names, columns))
                    if len(pending) >= 2 * jobs:
                        write(pending.popleft().result())
                while pending:
                    write(pending.popleft().result())
    tmp.replace(destination)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started
    return {"molecules": done, "errors": errors, "endpoints": names, "jobs": jobs,
            "seconds": round(seconds, 3),
            "molecules_per_second": round(done / seconds, 1) if seconds else None,
            "output": str(destination)}
