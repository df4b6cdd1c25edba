"""One store interface for every bucket (a local folder, S3, GCS, Azure Blob), its error map and probe.

Keys are ``/``-separated paths relative to the destination root. Every key is checked before use:
relative, no empty, ``.`` or ``..`` segment, no backslash, so it always lies under the root.

The operations a commit is built from (``tasks.lake.commit``):

* ``put_bytes(key, data, create=True)``: write only if the key does not exist (S3 ``If-None-Match: *``,
  GCS ``ifGenerationMatch=0``, Azure ``If-None-Match: *``, a local hard link that fails if the name exists);
* ``put_bytes(key, data, if_version=v)``: write only if the object is still version ``v`` (S3 and Azure
  ``If-Match: <etag>``, GCS ``ifGenerationMatch=<generation>``, a local compare-and-rename under a
  lock of the folder's descriptor, released by the kernel even on SIGKILL);
* ``get(key)``: the bytes with the version they have; ``list``, ``copy``, ``move``, ``delete``.

A refused condition raises ``PreconditionFailedError`` (retriable). Every backend maps its library's
errors to one tree (unauthenticated, permission denied, missing bucket, not found, precondition
failed, transient) with one sentence naming the block, the missing right and the fix; ``probe`` checks
a store at connect, conditional writes included: a store that ignores them is refused.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from stat import S_ISREG as stat_is_file
from typing import IO, NoReturn, TypeVar

from tasks.errors import (
    BadCredentialsError,
    FatalError,
    MissingObjectError,
    OutsideDestinationError,
    PermissionDeniedError,
    PipelineError,
    PreconditionFailedError,
    ServerError,
)

T = TypeVar("T")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float


@dataclass(frozen=True)
class Versioned:
    """An object's bytes and the version they are (an ETag, a GCS generation, a local content hash)."""

    data: bytes
    version: str


@dataclass(frozen=True)
class RetryPolicy:
    """One policy for every backend: exponential backoff with jitter on 5xx, throttling, dropped connections."""

    max_attempts: int = 8  # in all, the first included
    initial_backoff: float = 0.1
    max_backoff: float = 15.0
    deadline_seconds: float = 120.0


@dataclass(frozen=True)
class Owner:
    """How error sentences name a store: the service, the block, the bucket, the rights and the fixes."""

    service: str  # "S3"
    block: str  # "the S3Bucket block for bucket b"
    container: str  # "bucket b"
    credentials_fix: str  # "check the access key ID and secret access key in its AwsCredentials block"
    grant: str  # "grant it in its IAM policy"
    rights: dict[str, str] = field(default_factory=dict)  # action ("write") -> right ("s3:PutObject")


class Failure(StrEnum):
    """What a backend says a failure was; the base class turns it into one sentence of the error tree."""

    UNAUTHENTICATED = "unauthenticated"
    PERMISSION = "permission"
    MISSING_BUCKET = "missing bucket"
    NOT_FOUND = "not found"
    PRECONDITION = "precondition"
    TRANSIENT = "transient"
    OTHER = "other"


def check_key(key: str) -> str:
    """``key`` if it is a plain relative key (so it lies under the root), else ``OutsideDestinationError``."""
    parts = key.split("/")
    if (
        not key
        or key.startswith("/")
        or "\\" in key
        or "\x00" in key
        or ":" in parts[0]
        or any(p in ("", ".", "..") for p in parts[:-1])
        or parts[-1] in (".", "..")
    ):
        raise OutsideDestinationError(
            f"the key {key!r} does not lie under the destination root: nothing was read, written or deleted."
        )
    return key


def folder_of(prefix: str) -> str:
    """``a/b`` lists the folder ``a/b/``, never ``a/bc``; ``""`` is the root."""
    if not prefix:
        return ""
    check_key(prefix.rstrip("/") + "/x")
    return prefix if prefix.endswith("/") else prefix + "/"


class Store(ABC):
    """The store interface; backends implement the ``_``-methods and ``_classify``."""

    owner: Owner
    retry: RetryPolicy = RetryPolicy()

    # what a backend implements ------------------------------------------------------------------

    @abstractmethod
    def describe(self, key: str) -> str:
        """A location a person can paste (a path, s3://, gs://, https://)."""

    def local_path(self, key: str) -> Path | None:
        """Where ``key`` lives on local disk, if this store is a local folder."""
        return None

    @abstractmethod
    def _put(self, key: str, data: bytes, create: bool, if_version: str | None) -> str: ...

    @abstractmethod
    def _upload(self, local: Path, key: str) -> None: ...

    @abstractmethod
    def _get(self, key: str) -> Versioned | None: ...

    def _download(self, key: str, local: Path) -> None:
        """Copy ``key`` to the file ``local``; backends stream it (this default holds it in memory)."""
        found = self._get(key)
        if found is None:
            raise FileNotFoundError(key)
        local.write_bytes(found.data)

    @abstractmethod
    def _list(self, folder: str) -> list[ObjectInfo]: ...

    @abstractmethod
    def _copy(self, src: str, dst: str) -> None: ...

    @abstractmethod
    def _delete(self, keys: list[str]) -> None:
        """Delete ``keys``; a key already missing is not an error."""

    @abstractmethod
    def _classify(self, exc: Exception) -> tuple[str, str] | None:
        """(kind, a short detail such as the error code) for a library error; None: not the library's."""

    # the interface --------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes, *, create: bool = False, if_version: str | None = None) -> str:
        """Write ``key`` whole (readers see the old object or the new one); returns the new version.

        ``create``: only if absent; ``if_version``: only if still that version
        (``PreconditionFailedError`` otherwise).
        """
        return self._call("write", key, lambda: self._put(check_key(key), data, create, if_version))

    def upload(self, local: Path, key: str) -> None:
        self._call("write", key, lambda: self._upload(local, check_key(key)))

    def get(self, key: str) -> Versioned | None:
        return self._call("read", key, lambda: self._get(check_key(key)))

    def download(self, key: str, local: Path) -> None:
        """Copy the object ``key`` to the local file ``local`` (a warehouse loading from a bucket)."""

        def fetch() -> bool:
            try:
                self._download(check_key(key), local)
            except FileNotFoundError:  # no such object (obstore's NotFoundError is one too)
                return False
            return True

        if not self._call("read", key, fetch):
            raise MissingObjectError(
                f"{self.describe(key)} does not exist, so it cannot be read: re-run the unit."
            )

    def get_bytes(self, key: str) -> bytes | None:
        found = self.get(key)
        return found.data if found is not None else None

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object under the folder ``prefix``, recursively, sorted by key."""
        folder = folder_of(prefix)
        found = self._call("list", folder, lambda: self._list(folder))
        return sorted((i for i in found if i.key.startswith(folder)), key=lambda i: i.key)

    def copy(self, src: str, dst: str) -> None:
        self._call("write", dst, lambda: self._copy(check_key(src), check_key(dst)))

    def move(self, src: str, dst: str) -> None:
        self.copy(src, dst)
        self.delete([src])

    def delete(self, keys: Iterable[str]) -> None:
        unique = sorted({check_key(k) for k in keys})
        if unique:
            self._call("delete", unique[0], lambda: self._delete(unique))

    def prune(self, prefix: str) -> None:
        """Remove empty folders under ``prefix`` (a local folder has them; buckets do not)."""
        return None

    # the connect check ----------------------------------------------------------------------------

    def probe(self) -> None:
        """The bucket exists; we can list, write, read and delete; conditional writes are honoured."""
        key = f"_probe/{uuid.uuid4().hex}"
        self.list("_probe/")
        first = self.put_bytes(key, b"probe", create=True)
        try:
            self._expect_refused(key, "create-if-absent", create=True)
            got = self.get(key)
            if got is None or got.data != b"probe":
                raise FatalError(f"{self.describe(key)} did not read back what was written: check the store.")
            self.put_bytes(key, b"probe 2", if_version=got.version)
            self._expect_refused(key, "If-Match", if_version=got.version or first)
            if key not in {i.key for i in self.list("_probe/")}:
                raise FatalError(f"{self.describe(key)} is missing from the listing: check the store.")
        finally:
            self.delete([key])
            self.prune("_probe/")

    def _expect_refused(
        self, key: str, what: str, *, create: bool = False, if_version: str | None = None
    ) -> None:
        try:
            self.put_bytes(key, b"must be refused", create=create, if_version=if_version)
        except PreconditionFailedError:
            return
        raise FatalError(
            f"the {self.owner.service} endpoint of {self.owner.block} ignores conditional writes "
            f"({what}) on {self.owner.container}, which commits need: use a store that honours them."
        )

    # errors -------------------------------------------------------------------------------------

    def _call(self, action: str, key: str, operation: Callable[[], T]) -> T:
        try:
            return operation()
        except PipelineError:
            raise
        except Exception as exc:
            found = self._classify(exc)
            if found is None:
                raise
            kind = Failure.MISSING_BUCKET if found[0] == Failure.NOT_FOUND and action == "list" else found[0]
            self._raise(kind, found[1], action, key, exc)  # a listing finds nothing only if no bucket

    def _raise(self, kind: str, detail: str, action: str, key: str, exc: Exception) -> NoReturn:
        o = self.owner
        where = self.describe(key)
        if kind == Failure.UNAUTHENTICATED:
            raise BadCredentialsError(
                f"{o.service} rejected the credentials of {o.block}: {o.credentials_fix}."
            ) from exc
        if kind == Failure.MISSING_BUCKET:
            raise FatalError(
                f"{o.container} does not exist: create it or fix the name in {o.block}."
            ) from exc
        if kind == Failure.PERMISSION:
            right = o.rights.get(action, f"{action} access")
            raise PermissionDeniedError(
                f"the identity of {o.block} lacks {right} on {o.container}: {o.grant}."
            ) from exc
        if kind == Failure.PRECONDITION:
            raise PreconditionFailedError(f"{where} was changed by another run ({detail}).") from exc
        if kind == Failure.NOT_FOUND:
            raise MissingObjectError(
                f"{where} does not exist, so it cannot be read: re-run the unit."
            ) from exc
        if kind == Failure.TRANSIENT:
            raise ServerError(
                f"{o.service} kept failing ({detail}) to {action} {where} after {self.retry.max_attempts} "
                "attempts: the unit will be retried."
            ) from exc
        raise FatalError(f"{o.service} refused to {action} {where} ({detail}): check {o.block}.") from exc


# the local folder ---------------------------------------------------------------------------------


class LocalStore(Store):
    """A folder on local disk: renames make writes atomic; a hard link is the exclusive create; a
    compare-and-rename under ``flock`` of the folder (no lock file) is the If-Match. Listings and
    deletions never follow a symbolic link."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        where = f"the folder {self.root}"
        self.owner = Owner(
            "local folder",
            f"the LocalDestination block ({self.root})",
            where,
            "check the folder",
            "make it writable by the worker or choose another path",
            {"write": "write access", "read": "read access", "list": "read access", "delete": "write access"},
        )

    def describe(self, key: str) -> str:
        return str(self.root / key)

    def local_path(self, key: str) -> Path:
        return self._path(check_key(key))

    def _path(self, key: str) -> Path:
        """The file of ``key``, its folders checked to be real folders inside the root (no symlink)."""
        path = self.root / key
        parent = path.parent
        if os.path.realpath(parent) != str(parent):
            raise OutsideDestinationError(
                f"{parent} is (or lies under) a symbolic link out of the destination folder {self.root}: "
                "nothing was read, written or deleted there; replace the link by a real folder."
            )
        return path

    def _put(self, key: str, data: bytes, create: bool, if_version: str | None) -> str:
        target = self._target(key)
        tmp = self._temporary(target.parent, lambda out: out.write(data))
        try:
            if create:
                with _folder_lock(target.parent):
                    try:
                        os.link(tmp, target)  # fails if the name exists: the exclusive create
                    except FileExistsError as exc:
                        raise PreconditionFailedError(f"{target} already exists.") from exc
            elif if_version is not None:
                with _folder_lock(target.parent):
                    current = self._get(key)
                    if current is None or current.version != if_version:
                        raise PreconditionFailedError(f"{target} is no longer version {if_version}.")
                    os.replace(tmp, target)
            else:
                os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(target.parent)
        return hashlib.md5(data, usedforsecurity=False).hexdigest()

    def _upload(self, local: Path, key: str) -> None:
        target = self._target(key)
        if local.resolve() == target:
            return  # the writer wrote it in place (a stage of a local folder)

        def copy(out: IO[bytes]) -> None:
            with local.open("rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)

        os.replace(self._temporary(target.parent, copy), target)

    def _get(self, key: str) -> Versioned | None:
        path = self._path(key)
        if path.is_symlink():
            return None
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return Versioned(data, hashlib.md5(data, usedforsecurity=False).hexdigest())

    def _download(self, key: str, local: Path) -> None:
        path = self._path(key)
        if path.is_symlink():
            raise FileNotFoundError(key)
        shutil.copyfile(path, local)

    def _list(self, folder: str) -> list[ObjectInfo]:
        base = self.root / folder if folder else self.root
        if not base.is_dir() or os.path.realpath(base) != str(base).rstrip("/"):
            return []  # missing, or a symbolic link: never followed
        found = []
        for top, dirs, files in os.walk(base, followlinks=False):
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(top, d))]
            for name in files:
                path = Path(top, name)
                try:
                    stat = path.lstat()
                except FileNotFoundError:  # deleted while we listed (another run's cleanup)
                    continue
                if name.startswith(".tmp-") or not stat_is_file(stat.st_mode):
                    continue  # temporary files, and symbolic links: never followed
                found.append(ObjectInfo(path.relative_to(self.root).as_posix(), stat.st_size, stat.st_mtime))
        return found

    def _copy(self, src: str, dst: str) -> None:
        self._upload(self._path(src), dst)

    def move(self, src: str, dst: str) -> None:
        self._call("write", dst, lambda: self._rename(check_key(src), check_key(dst)))

    def _rename(self, src: str, dst: str) -> None:
        source, target = self._path(src), self._target(dst)
        os.replace(source, target)
        _remove_empty_parents(source, self.root)

    def _delete(self, keys: list[str]) -> None:
        paths = [self._path(k) for k in keys]  # every one checked before the first is removed
        for path in paths:
            path.unlink(missing_ok=True)
        for path in paths:  # empty folders would look like empty partitions to a globbing reader
            _remove_empty_parents(path, self.root)

    def prune(self, prefix: str) -> None:
        base = self.root / folder_of(prefix)
        if not base.is_dir() or base.is_symlink():
            return
        for top, _dirs, _files in sorted(os.walk(base, followlinks=False), reverse=True):
            with suppress(OSError):
                os.rmdir(top)
        _remove_empty_parents(base / "x", self.root)

    def _classify(self, exc: Exception) -> tuple[str, str] | None:
        if isinstance(exc, PermissionError):
            return Failure.PERMISSION, exc.strerror or "permission denied"
        if isinstance(exc, OSError):
            return Failure.OTHER, exc.strerror or type(exc).__name__
        return None

    def _target(self, key: str) -> Path:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return self._path(key)  # checked again: a link made meanwhile is refused

    def _temporary(self, folder: Path, write: Callable[[IO[bytes]], object]) -> Path:
        folder.mkdir(parents=True, exist_ok=True)  # again: another run may have pruned it if empty
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".tmp-", delete=False) as tmp:
            try:
                write(tmp)
                tmp.flush()
                os.fsync(tmp.fileno())
            except BaseException:
                os.unlink(tmp.name)
                raise
        return Path(tmp.name)


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the folder itself: no lock file, released by the kernel if we die."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_empty_parents(path: Path, stop: Path) -> None:
    parent = path.parent
    while parent != stop and parent.is_dir() and not parent.is_symlink():
        try:
            parent.rmdir()
        except OSError:
            return
        parent = parent.parent
