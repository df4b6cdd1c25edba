"""Deterministic Mixpanel-like export lines, their fingerprint, and an on-disk cache for big days."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from datetime import date, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

import xxhash

from sandbox.config import ProjectConfig
from sandbox.payloads import pools

EPOCH = date(1970, 1, 1)
LINE_PREFIX = b'{"event":'
PROPS_SEP = b',"properties":'
HOTSHARD = "$hotshard_events"

# Weighted by repetition. Some names are served with \u escapes: the fingerprint uses the decoded name.
EVENT_NAMES = [
    *["$mp_web_page_view"] * 6,
    *["Page View"] * 4,
    *["Search"] * 2,
    *["Add To Cart"] * 2,
    "Sign Up",
    "Purchase",
    "Video Played",
    "Añadir al carrito",
    "ログイン",
    "$session_start",
]
EVENT_JSON = [json.dumps(n, ensure_ascii=n == "ログイン") for n in EVENT_NAMES]
PATHS = [
    "/",
    "/pricing",
    "/blog/naïve-bayes",
    "/search?q=caf%C3%A9",
    "/cart",
    "/checkout/step-2",
    "/docs/api",
]

# Days up to this many lines are memoised in memory (tests and demos re-read the same small days).
SMALL_DAY = 2000
# Per-line probabilities.
P_NO_INSERT_ID = 0.03
P_DUPLICATE = 0.004
P_HOTSHARD = 0.002
P_BLOB = 0.001
P_LATE = 0.03
P_LOGGED_IN = 0.55
P_IDENTITY_EVENT = 0.03  # original ID merge only


def day_start(day: date) -> int:
    """Epoch seconds of 00:00 UTC; for local-time projects also 00:00 of the day in 'local epoch' seconds."""
    return (day - EPOCH).days * 86400


def _utc_offsets(cfg: ProjectConfig, day: date) -> list[int]:
    # Local-time projects store `time` as wall-clock seconds "as if UTC"; the true instant (needed for
    # mp_processing_time_ms) is local epoch minus the UTC offset valid at that wall-clock hour.
    if cfg.time_mode == "utc":
        return [0] * 24
    tz = ZoneInfo(cfg.timezone)
    hours = (datetime(day.year, day.month, day.day, h, tzinfo=tz) for h in range(24))
    return [int(d.utcoffset().total_seconds()) for d in hours]  # type: ignore[union-attr]


@lru_cache(maxsize=65536)
def device_id(seed: int, index: int) -> str:
    # Stable across days so identities recur: Mixpanel web SDK style dashed hex.
    h = xxhash.xxh3_128_hexdigest(f"{seed}:device:{index}".encode())
    return f"{h[:11]}-{h[11:24]}-{h[24:32]}-1fa400-{h[:11]}"


@lru_cache(maxsize=65536)
def anon_id(seed: int, index: int) -> str:
    """Original ID Merge: the anonymous distinct_id of device ``index``. A UUID v4, as current SDKs
    send, except one device in 7 whose app sends its own text id (``anon-<12 hex>``): Mixpanel
    refuses an ``$identify`` of such an id (errAnonDistinctIdNonGUIDForm), so only a
    ``$create_alias`` or ``$merge`` can join it to its user."""
    h = xxhash.xxh3_128_hexdigest(f"{seed}:anon:{index}".encode())
    if index % 7 == 6:
        return f"anon-{h[:12]}"
    variant = "89ab"[int(h[16], 16) & 3]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:32]}"


def user_id(device_index: int) -> str | None:
    # 3 of 5 devices belong to a known user; two devices share each user (multi-device users).
    if device_index % 5 >= 3:
        return None
    return f"user_{device_index // 2}@example.com"


def device_count(cfg: ProjectConfig) -> int:
    """Size of the device pool events draw from (the same devices recur every day)."""
    return max(8, cfg.events_per_day // 5)


def identity(cfg: ProjectConfig, device: int, logged_in: bool) -> tuple[str, str]:
    """(distinct_id, JSON text of the identity properties) of an event sent from device number ``device``."""
    dev = device_id(cfg.seed, device)
    user = user_id(device)
    if logged_in and user is not None:
        return user, f'"distinct_id":"{user}","$device_id":"{dev}","$user_id":"{user}"'
    # Simplified ID merge derives anonymous distinct_ids from the device; original uses the app's anon id.
    distinct = anon_id(cfg.seed, device) if cfg.identity_mode == "original" else f"$device:{dev}"
    return distinct, f'"distinct_id":"{distinct}","$device_id":"{dev}"'


class _DayGenerator:
    def __init__(self, cfg: ProjectConfig, day: date) -> None:
        self.cfg = cfg
        self.rng = random.Random(f"day:{cfg.seed}:{day.toordinal()}")
        self.pools = pools(cfg.seed)
        self.start = day_start(day)
        self.offsets = _utc_offsets(cfg, day)
        self.n_devices = device_count(cfg)
        self.original = cfg.identity_mode == "original"

    def lines(self) -> Iterator[bytes]:
        rand = self.rng.random
        total = self.cfg.events_per_day
        emitted = 0
        pending: bytes | None = None
        pending_at = 0
        while emitted < total:
            if pending is not None and emitted >= pending_at:
                line, pending = pending, None
            else:
                line, has_insert_id = self.line()
                # Mixpanel does not deduplicate on export: the same event (same $insert_id) appears twice.
                if pending is None and has_insert_id and rand() < P_DUPLICATE:
                    pending, pending_at = line, emitted + 1 + int(rand() * 50)
            emitted += 1
            yield line

    def ids(self, device: int, logged_in: bool) -> tuple[str, str]:
        """(distinct_id, JSON text of the identity properties)."""
        return identity(self.cfg, device, logged_in)

    def line(self) -> tuple[bytes, bool]:
        rand = self.rng.random
        t = self.start + int(rand() * 86400)
        utc = t - self.offsets[(t - self.start) // 3600]
        late = rand() < P_LATE
        processed = (utc * 1000) + int(rand() * (21_600_000 if late else 300_000)) + 1000
        device = int(rand() * self.n_devices)
        if self.original and rand() < P_IDENTITY_EVENT and user_id(device) is not None:
            return self.identity_line(t, processed, device), True
        distinct, ids = self.ids(device, rand() < P_LOGGED_IN)
        event = EVENT_JSON[int(rand() * len(EVENT_JSON))]
        if rand() < P_HOTSHARD:
            # Beyond a per-(event, distinct_id) threshold Mixpanel renames the event and blanks distinct_id.
            ids = f'"distinct_id":"","mp_original_event_name":{event},"mp_original_distinct_id":"{distinct}"'
            event = f'"{HOTSHARD}"'
        has_insert_id = rand() >= P_NO_INSERT_ID
        insert = f',"$insert_id":"{self.rng.getrandbits(96):024x}"' if has_insert_id else ""
        pool = self.pools
        k = int(rand() * len(pool.devices))
        url = f"https://shop.example.com{PATHS[k % len(PATHS)]}#r{int(rand() * 1000)}"
        blob = "," + pool.blob if rand() < P_BLOB else ""
        head = f'{{"time":{t},{ids}{insert}'
        if k & 1:
            props = f'{head},"mp_processing_time_ms":{processed},"$current_url":"{url}",{pool.devices[k]}'
            props += f",{pool.payloads[int(rand() * len(pool.payloads))]}{blob}}}"
        else:
            props = f'{head},"$current_url":"{url}",{pool.payloads[int(rand() * len(pool.payloads))]},'
            props += f'{pool.devices[k]}{blob},"mp_processing_time_ms":{processed}}}'
        return f'{{"event":{event},"properties":{props}}}'.encode(), has_insert_id

    def identity_line(self, t: int, processed: int, device: int) -> bytes:
        # Original ID merge: explicit identity events link anonymous ids to the identified user.
        dev = anon_id(self.cfg.seed, device)
        user = user_id(device)
        kind = int(self.rng.random() * 3)
        insert = f"{self.rng.getrandbits(96):024x}"
        if kind == 0:
            event, extra = "$identify", f'"$anon_id":"{dev}","$identified_id":"{user}"'
        elif kind == 1:
            event, extra = "$create_alias", f'"alias":"{dev}"'
        else:
            event, extra = "$merge", f'"$distinct_ids":["{dev}","{user}"]'
        props = f'{{"time":{t},"distinct_id":"{user}",{extra},"$insert_id":"{insert}","mp_processing_time_ms":{processed}}}'
        return f'{{"event":"{event}","properties":{props}}}'.encode()


def iter_day_lines(cfg: ProjectConfig, day: date) -> Iterator[bytes]:
    """The served lines of one day, generated lazily (big days do not fit in memory as a list)."""
    if cfg.created is not None and day < cfg.created:
        return iter(())  # before the project existed: the Raw Export API answers an empty body
    return _DayGenerator(cfg, day).lines()


@lru_cache(maxsize=32)
def _small_day(cfg: ProjectConfig, day: date) -> tuple[bytes, ...]:
    return tuple(iter_day_lines(cfg, day))


def day_lines(cfg: ProjectConfig, day: date) -> list[bytes]:
    """All JSON lines of one day (no trailing newlines); identical for the same (cfg, day)."""
    if cfg.events_per_day <= SMALL_DAY:
        return list(_small_day(cfg, day))
    return list(iter_day_lines(cfg, day))


def split_line(line: bytes) -> tuple[bytes, bytes]:
    """(event name as UTF-8, exact properties text) of a served line."""
    if not line.startswith(LINE_PREFIX) or not line.endswith(b"}"):
        raise ValueError(f"not an export line: {line[:80]!r}")
    i = line.find(PROPS_SEP, len(LINE_PREFIX))
    if i < 0:
        raise ValueError(f"no properties in line: {line[:80]!r}")
    name_json = line[len(LINE_PREFIX) : i]
    name = json.loads(name_json).encode() if b"\\" in name_json else name_json[1:-1]
    return name, line[i + len(PROPS_SEP) : -1]


def line_hash(line: bytes) -> int:
    name, props = split_line(line)
    return xxhash.xxh3_64_intdigest(props, seed=xxhash.xxh3_64_intdigest(name))


def fingerprint(lines: Iterable[bytes]) -> tuple[int, str]:
    """(rows, fingerprint): order-independent sum of per-line xxh3 hashes mod 2**64, duplicates included."""
    rows = 0
    total = 0
    for line in lines:
        total += line_hash(line)
        rows += 1
    return rows, f"{total & 0xFFFFFFFFFFFFFFFF:016x}"
