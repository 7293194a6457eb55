"""A screening library: its files, its records (SMILES, an optional identifier, the SDF block),
and its division into shards that any machine can read on its own.

A library is one file, a directory, a glob, or an object-store URL that fsspec opens
(`s3://bucket/real/*.smi.gz`); SMILES/TXT, CSV/TSV and SDF, each optionally gzipped. Planning
reads every file once, counting records and noting the byte offset where each shard starts,
so a shard is `(file, offset, records)`: a worker seeks (or, in a compressed file, reads) to its
offset and reads its records, and the whole plan is deterministic, which is what lets a killed
screen resume by shard.
"""

from __future__ import annotations

import csv
import glob
import io
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from molserve.data.dataset import allow_long_csv_fields
from molserve.errors import InvalidInput, NotFound

SDF_SUFFIXES = {".sdf", ".sd"}
TABLE_SUFFIXES = {".csv", ".tsv"}
LIBRARY_SUFFIXES = SDF_SUFFIXES | TABLE_SUFFIXES | {".smi", ".txt", ".smiles"}
UNREADABLE_SDF = "<unreadable SDF record>"


@dataclass(frozen=True)
class Record:
    """One input molecule: its SMILES (as the screen reads it), its identifier when the caller
    named an ID column, and its SDF block when it came from an SDF file."""

    smiles: str
    identifier: str | None = None
    block: str | None = None


def format_of(path: str) -> str:
    """`sdf`, `table` or `smiles`, from the name (a `.gz` ending is looked through)."""
    name = path.lower().removesuffix(".gz")
    suffix = os.path.splitext(name)[1]
    if suffix in SDF_SUFFIXES:
        return "sdf"
    if suffix in TABLE_SUFFIXES:
        return "table"
    return "smiles"


def _is_url(source: str) -> bool:
    return "://" in source and not source.startswith("file://")


def library_files(source: str | Path) -> list[str]:
    """The files of a library, sorted: a file, a directory (its library files), a glob, or an
    fsspec URL (with or without a glob)."""
    text = str(source)
    if _is_url(text):
        import fsspec

        fs, _, paths = fsspec.get_fs_token_paths(text)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        found = sorted(p if "://" in p else f"{protocol}://{p}" for p in paths)
    elif os.path.isdir(text):
        found = sorted(str(p) for p in Path(text).iterdir()
                       if p.is_file() and _library_suffix(p.name))
    elif any(ch in text for ch in "*?["):
        found = sorted(p for p in glob.glob(text) if os.path.isfile(p))
    elif os.path.isfile(text):
        found = [text]
    else:
        raise NotFound(f"no such file: {text}")
    if not found:
        raise NotFound(f"no library files (SMILES, CSV or SDF, gzipped or not) in {text}",
                       code="empty_library")
    return found


def _library_suffix(name: str) -> bool:
    return os.path.splitext(name.lower().removesuffix(".gz"))[1] in LIBRARY_SUFFIXES


def open_binary(path: str) -> IO[bytes]:
    """A file's bytes, decompressed when its name ends in .gz; local or through fsspec."""
    if _is_url(path):
        import fsspec

        return fsspec.open(path, "rb", compression="infer").open()
    if path.lower().endswith(".gz"):
        import gzip

        return gzip.open(path, "rb")
    return open(path, "rb")


def _decode(line: bytes) -> str:
    return line.decode("utf-8-sig" if line.startswith(b"\xef\xbb\xbf") else "utf-8", errors="replace")


def _table_header(path: str, handle: IO[bytes]) -> tuple[list[str], str]:
    header = _decode(handle.readline())
    delimiter = "\t" if header.count("\t") > header.count(",") else ","
    fields = next(csv.reader([header], delimiter=delimiter), [])
    return [f.strip() for f in fields], delimiter


def _column(fields: list[str], wanted: str | None, path: str, what: str, option: str) -> int:
    column = wanted or (next((f for f in fields if f.lower() == "smiles"), None) if what == "SMILES"
                        else None)
    if column is None or column not in fields:
        missing = f"no column {column!r}" if column else f"no {what} column"
        raise InvalidInput(f"{missing} in {os.path.basename(path)} (columns: {', '.join(fields)}); "
                           f"name the column that holds {what} ({option})",
                           code="no_smiles_column" if what == "SMILES" else "no_id_column")
    return fields.index(column)


def check_columns(path: str, smiles_col: str | None, id_col: str | None) -> None:
    """Refuse now (not on a remote worker) a table without the SMILES or ID column asked for."""
    if format_of(path) != "table":
        return
    with open_binary(path) as handle:
        fields, _ = _table_header(path, handle)
    _column(fields, smiles_col, path, "SMILES", "--smiles-col, smiles_col")
    if id_col:
        _column(fields, id_col, path, "identifiers", "--id-col, id_col")


def _is_record_line(line: bytes) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith(b"#")


def _smiles_header(line: bytes) -> bool:
    return line.split()[0].lower() == b"smiles"


@dataclass(frozen=True)
class Shard:
    """Records `[start, start + records)` of `path` (counted from 0 within the file), read from
    byte `offset` of its decompressed text; `first_row` numbers them in the whole library."""

    index: int
    path: str
    offset: int
    start: int
    records: int
    first_row: int
    end: int = -1  # the byte after its last record (-1: the end of the file)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Shard:
        return cls(**data)


def _boundaries(path: str, shard_size: int) -> tuple[int, list[tuple[int, int]], int]:
    """The number of records in `path`, (start record, byte offset) of each shard in it, and
    the length of its (decompressed) text."""
    kind = format_of(path)
    starts: list[tuple[int, int]] = []
    count = 0
    position = 0
    with open_binary(path) as handle:
        if kind == "table":
            position += len(handle.readline())
        record_start = position  # SDF: where the current record began
        pending = False  # SDF: text since the last $$$$ (a last record may lack its $$$$)
        first = True
        for line in handle:
            if kind == "sdf":
                if line.startswith(b"$$$$"):
                    if count % shard_size == 0:
                        starts.append((count, record_start))
                    count += 1
                    record_start = position + len(line)
                    pending = False
                elif line.strip():
                    pending = True
            elif kind == "table":
                if line.strip(b"\r\n"):
                    if count % shard_size == 0:
                        starts.append((count, position))
                    count += 1
            elif _is_record_line(line):
                if first and _smiles_header(line):
                    first = False
                else:
                    first = False
                    if count % shard_size == 0:
                        starts.append((count, position))
                    count += 1
            position += len(line)
    if pending:
        if count % shard_size == 0:
            starts.append((count, record_start))
        count += 1
    return count, starts, position


def plan_shards(files: list[str], shard_size: int) -> list[Shard]:
    """Shards of at most `shard_size` records, in library order (files in the given order)."""
    shards: list[Shard] = []
    row = 0
    for path in files:
        count, starts, length = _boundaries(path, shard_size)
        ends = [offset for _, offset in starts[1:]] + [length]
        for (start, offset), end in zip(starts, ends, strict=True):
            records = min(shard_size, count - start)
            shards.append(Shard(len(shards), path, offset, start, records, row + start, end))
        row += count
    return shards


def _skip_to(handle: IO[bytes], offset: int) -> None:
    if offset <= 0:
        return
    try:
        handle.seek(offset)
        return
    except (io.UnsupportedOperation, OSError, ValueError):
        pass
    left = offset
    while left:
        block = handle.read(min(left, 1 << 20))
        if not block:
            break
        left -= len(block)


def _sdf_identifier(block: str, id_col: str) -> str | None:
    if id_col == "_Name":
        return block.split("\n", 1)[0].strip()
    lines = block.splitlines()
    for position, line in enumerate(lines):
        if line.startswith(">") and f"<{id_col}>" in line:
            return lines[position + 1].strip() if position + 1 < len(lines) else ""
    return None


def read_records(path: str, *, smiles_col: str | None = None, id_col: str | None = None,
                 offset: int = 0, records: int | None = None) -> Iterator[Record]:
    """The records of `path` (or `records` of them from byte `offset`, a shard's start)."""
    kind = format_of(path)
    with open_binary(path) as handle:
        if kind == "table":
            fields, delimiter = _table_header(path, handle)
            smiles_at = _column(fields, smiles_col, path, "SMILES", "--smiles-col, smiles_col")
            id_at = _column(fields, id_col, path, "identifiers", "--id-col, id_col") if id_col else None
        _skip_to(handle, offset)
        lines = (_decode(line) for line in handle)
        yielded = 0
        if kind == "sdf":
            from rdkit import Chem, RDLogger

            RDLogger.DisableLog("rdApp.*")
            block: list[str] = []
            for line in lines:
                block.append(line)
                if not line.startswith("$$$$"):
                    continue
                text = "".join(block)
                block = []
                mol = Chem.MolFromMolBlock(text)
                yield Record(Chem.MolToSmiles(mol) if mol is not None else UNREADABLE_SDF,
                             _sdf_identifier(text, id_col) if id_col else None, text)
                yielded += 1
                if records is not None and yielded >= records:
                    return
            text = "".join(block)
            if text.strip():  # a last record without its $$$$ line
                mol = Chem.MolFromMolBlock(text)
                yield Record(Chem.MolToSmiles(mol) if mol is not None else UNREADABLE_SDF,
                             _sdf_identifier(text, id_col) if id_col else None, text + "$$$$\n")
            return
        if kind == "table":
            allow_long_csv_fields()
            for row in csv.reader((line for line in lines if line.strip("\r\n")), delimiter=delimiter):
                smiles = (row[smiles_at] if smiles_at < len(row) else "").strip()
                identifier = (row[id_at] if id_at is not None and id_at < len(row) else "").strip()
                yield Record(smiles, identifier if id_at is not None else None)
                yielded += 1
                if records is not None and yielded >= records:
                    return
            return
        first = offset == 0
        for line in lines:
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            fields = stripped.split()
            if first and fields[0].lower() == "smiles":
                first = False
                continue  # a header line
            first = False
            # A SMILES file's second field is the molecule's name: its identifier.
            yield Record(fields[0], (fields[1] if len(fields) > 1 else "") if id_col else None)
            yielded += 1
            if records is not None and yielded >= records:
                return


def read_shard(shard: Shard, *, smiles_col: str | None = None,
               id_col: str | None = None) -> list[Record]:
    return list(read_records(shard.path, smiles_col=smiles_col, id_col=id_col, offset=shard.offset,
                             records=shard.records))


def is_local(path: str) -> bool:
    return not _is_url(path)


def shard_payload(shard: Shard) -> bytes:
    """A shard's own text (a table's header line first), for an engine whose workers cannot
    read the driver's files: `materialize` turns it back into a readable shard."""
    with open_binary(shard.path) as handle:
        header = handle.readline() if format_of(shard.path) == "table" else b"#\n"
        _skip_to(handle, shard.offset)
        size = (shard.end if shard.end >= 0 else 1 << 62) - shard.offset
        return header + handle.read(size)


def materialize(shard: Shard, payload: bytes, folder: Path) -> Shard:
    """The shard `payload` holds, written into `folder` (the same records, rows and index)."""
    suffix = {"table": ".csv" if not shard.path.lower().removesuffix(".gz").endswith(".tsv") else ".tsv",
              "sdf": ".sdf", "smiles": ".smi"}[format_of(shard.path)]
    path = folder / f"shard-{shard.index:05d}{suffix}"
    path.write_bytes(payload)
    header = payload.index(b"\n") + 1  # a table's header line, or the comment line added
    return Shard(shard.index, str(path), header, 0, shard.records, shard.first_row, len(payload))
