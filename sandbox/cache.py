"""Day summaries (rows, fingerprint) and the optional on-disk cache of generated days.

Benchmarks serve millions of lines per day; generating them per request would measure the sandbox, not the
client. With `cfg.cache_dir` a day is generated once into `<cache_dir>/<key>/<YYYY-MM-DD>.jsonl` (exactly the
served bytes: lines each followed by "\\n") with `<YYYY-MM-DD>.meta.json` holding rows and fingerprint. With
`cfg.gzip_cached` too, a date range's body is gzipped once (one member, level 1 as the streamed gzip) into
`<FROM>_<TO>.jsonl.gz` beside them, and served as it is.
"""

from __future__ import annotations

import json
import os
import threading
import zlib
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

from sandbox.config import ProjectConfig
from sandbox.data import fingerprint, iter_day_lines, line_hash

WRITE_BATCH = 4096
_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


@dataclass(frozen=True)
class DaySummary:
    rows: int
    fingerprint: str

    def as_dict(self) -> dict[str, int | str]:
        return {"rows": self.rows, "fingerprint": self.fingerprint}


def day_paths(cfg: ProjectConfig, day: date) -> tuple[Path, Path]:
    assert cfg.cache_dir is not None
    base = Path(cfg.cache_dir) / cfg.data_key()
    return base / f"{day.isoformat()}.jsonl", base / f"{day.isoformat()}.meta.json"


def _lock_for(path: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(path, threading.Lock())


def _write_day(cfg: ProjectConfig, day: date, data: Path, meta: Path) -> None:
    data.parent.mkdir(parents=True, exist_ok=True)
    tmp = data.with_name(f"{data.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    rows = 0
    total = 0
    batch: list[bytes] = []
    with open(tmp, "wb", buffering=1 << 20) as out:
        for line in iter_day_lines(cfg, day):
            total += line_hash(line)
            rows += 1
            batch.append(line)
            if len(batch) >= WRITE_BATCH:
                out.write(b"\n".join(batch) + b"\n")
                batch.clear()
        if batch:
            out.write(b"\n".join(batch) + b"\n")
    os.replace(tmp, data)
    summary = {"rows": rows, "fingerprint": f"{total & 0xFFFFFFFFFFFFFFFF:016x}"}
    meta_tmp = meta.with_name(meta.name + ".tmp")
    meta_tmp.write_text(json.dumps(summary))
    os.replace(meta_tmp, meta)


def ensure_cached(cfg: ProjectConfig, day: date) -> Path:
    """Path of the day's cached body, generating it first if needed (thread-safe within a process)."""
    data, meta = day_paths(cfg, day)
    if meta.exists() and data.exists():
        return data
    with _lock_for(data):
        if not (meta.exists() and data.exists()):
            _write_day(cfg, day, data, meta)
    return data


GZIP_LEVEL = 1  # as the streamed gzip (sandbox.stream): cheap to make, the client inflates it all the same


def ensure_gzipped(cfg: ProjectConfig, days: list[date]) -> Path:
    """Path of the gzipped body of ``days`` (consecutive), compressed on the first request for them."""
    first = ensure_cached(cfg, days[0])
    path = first.with_name(f"{days[0].isoformat()}_{days[-1].isoformat()}.jsonl.gz")
    if path.exists():
        return path
    with _lock_for(path):
        if path.exists():
            return path
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        deflate = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
        with open(tmp, "wb") as out:
            for day in days:
                with open(ensure_cached(cfg, day), "rb") as f:
                    while chunk := f.read(1 << 20):
                        out.write(deflate.compress(chunk))
            out.write(deflate.flush())
        os.replace(tmp, path)
    return path


@lru_cache(maxsize=4096)
def _generated_summary(cfg: ProjectConfig, day: date) -> DaySummary:
    rows, fp = fingerprint(iter_day_lines(cfg, day))
    return DaySummary(rows, fp)


def day_summary(cfg: ProjectConfig, day: date) -> DaySummary:
    """Rows and fingerprint of the un-faulted day, as a correct client should commit it."""
    if cfg.cache_dir is None:
        return _generated_summary(cfg, day)
    ensure_cached(cfg, day)
    meta = json.loads(day_paths(cfg, day)[1].read_text())
    return DaySummary(int(meta["rows"]), str(meta["fingerprint"]))
