"""The object store a fleet of gateways shares (`MOLSERVE_STORAGE_URL`): model versions, uploads
and results, so that a job claimed on one machine reads an upload made on another and its result
downloads from any gateway.

Any fsspec URL: `s3://bucket/prefix` (through s3fs; credentials and endpoint from the usual AWS
variables), `gs://...`, or `file:///shared/path`. Objects are written whole (to a temporary key,
then moved, where the backend can; S3 makes a single PUT visible at once) and never changed
after: a version, an upload and a result each have keys of their own.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


class ObjectStore:
    def __init__(self, url: str) -> None:
        import fsspec

        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.root = self.root.rstrip("/")

    def _path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"object key {key!r} must be relative, without '..'")
        return f"{self.root}/{key}"

    def url_of(self, key: str) -> str:
        """The fsspec URL of an object (what the stores record and `open_url` reads)."""
        return f"{self.url}/{key}"

    def key_of(self, url: str) -> str | None:
        """The key of an object of this store's, from its URL; None for another URL."""
        prefix = f"{self.url}/"
        return url[len(prefix):] if url.startswith(prefix) else None

    def put_file(self, local: Path, key: str) -> str:
        self.fs.makedirs(self._path(key).rsplit("/", 1)[0], exist_ok=True)
        self.fs.put_file(str(local), self._path(key))
        return self.url_of(key)

    def put_bytes(self, data: bytes, key: str) -> str:
        self.fs.makedirs(self._path(key).rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(self._path(key), data)
        return self.url_of(key)

    def get_file(self, key: str, local: Path) -> Path:
        """Download an object to `local`, whole or not at all (a partial file is removed)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(local.name + ".partial")
        try:
            self.fs.get_file(self._path(key), str(partial))
            partial.replace(local)
        finally:
            partial.unlink(missing_ok=True)
        return local

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def delete(self, key: str) -> None:
        try:
            self.fs.rm(self._path(key), recursive=True)
        except FileNotFoundError:
            pass

    @contextmanager
    def open(self, key: str) -> Iterator[IO[bytes]]:
        with self.fs.open(self._path(key), "rb") as handle:
            yield handle


def is_object_url(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def open_url(url: str) -> IO[bytes]:
    """An object's bytes, by its URL (any fsspec protocol)."""
    import fsspec

    return fsspec.open(url, "rb").open()


def fetch(url: str, local: Path) -> Path:
    """An object copied to a local file (once: an existing copy is kept)."""
    if local.exists():
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    partial = local.with_name(local.name + ".partial")
    with open_url(url) as source, open(partial, "wb") as target:
        shutil.copyfileobj(source, target, 1 << 20)
    partial.replace(local)
    return local
