"""The tiny storage protocol every object store implements, and its local-folder implementation.

Keys are ``/``-separated paths relative to the destination root. Writes of single objects are
atomic (readers see the old object or the new one); there is no atomic multi-object operation,
which is why ``tasks.objectstore`` builds commits out of these primitives.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float


class Storage(Protocol):
    def describe(self, key: str) -> str:
        """A location a person can paste (file:// or s3:// …)."""
        ...

    def local_path(self, key: str) -> Path | None:
        """Where ``key`` lives on local disk, if this store is a local folder."""
        ...

    def upload(self, local: Path, key: str) -> None: ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_bytes(self, key: str) -> bytes | None: ...

    def list(self, prefix: str) -> list[ObjectInfo]: ...

    def move(self, src: str, dst: str) -> None: ...

    def delete(self, keys: Iterable[str]) -> None: ...

    def lock(self, name: str) -> AbstractContextManager[None]: ...


class LocalStorage:
    """A folder on local disk; renames make moves and single-file writes atomic."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def describe(self, key: str) -> str:
        return str(self.root / key)

    def local_path(self, key: str) -> Path:
        return self.root / key

    def upload(self, local: Path, key: str) -> None:
        target = self.root / key
        if local.resolve() == target:
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix="_tmp-", delete=False) as tmp:
            with local.open("rb") as src:
                shutil.copyfileobj(src, tmp, 1 << 20)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp.name, target)

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix="_tmp-", delete=False) as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp.name, target)
        _fsync_dir(target.parent)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> list[ObjectInfo]:
        base = self.root / prefix
        if not base.exists():
            return []
        found = []
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            stat = path.stat()
            found.append(ObjectInfo(path.relative_to(self.root).as_posix(), stat.st_size, stat.st_mtime))
        return found

    def move(self, src: str, dst: str) -> None:
        target = self.root / dst
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.root / src, target)

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for key in keys:
            (self.root / key).unlink(missing_ok=True)
        # empty folders left behind would look like empty partitions to a globbing reader
        for key in keys:
            _remove_empty_parents(self.root / key, self.root)

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        path = self.root / "_locks" / f"{name.replace('/', '.')}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_empty_parents(path: Path, stop: Path) -> None:
    parent = path.parent
    while parent != stop and parent.is_dir():
        try:
            parent.rmdir()
        except OSError:
            return
        parent = parent.parent
