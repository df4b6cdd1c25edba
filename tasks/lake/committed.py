"""Reading the files a manifest names, in one place: a missing one is ``MissingCommittedFileError``.

A committed file is never changed while a manifest names it; it disappears only when a newer commit
of its partition no longer names it (the commit removes it) or when someone removes it by hand. Either
way a reader cannot go on with the version it started from, so every reader of committed files (the
purge, the recount, the table formats, the warehouse loads, the verification) reads through here and
gets the one error of the tree naming the file; a caller that may have lost a race tells so from the
partition's manifest (``tasks.warehouses.tableformat.TableFormatHook``).
"""

from __future__ import annotations

from pathlib import Path

from tasks.errors import MissingCommittedFileError, MissingObjectError
from tasks.lake.store import Store


def read_committed(store: Store, key: str) -> bytes:
    """The bytes of the committed file ``key``."""
    data = store.get_bytes(key)
    if data is None:
        raise _missing(store, key)
    return data


def download_committed(store: Store, key: str, local: Path) -> Path:
    """The committed file ``key`` copied to the local file ``local``; returns ``local``."""
    try:
        store.download(key, local)
    except MissingObjectError as exc:
        raise _missing(store, key) from exc
    return local


def local_committed(store: Store, key: str, scratch: Path) -> Path:
    """A local file with the committed file's bytes: the file itself in a local folder (nothing
    copied), else a download to ``scratch``."""
    local = store.local_path(key)
    if local is None:
        return download_committed(store, key, scratch)
    if not local.is_file() or local.is_symlink():
        raise _missing(store, key)
    return local


def _missing(store: Store, key: str) -> MissingCommittedFileError:
    return MissingCommittedFileError(
        f"{store.describe(key)} is named by a manifest but missing: it was removed outside the pipeline "
        "(repair cannot bring it back) or a newer commit of its partition replaced it meanwhile; "
        "export the partition again."
    )
