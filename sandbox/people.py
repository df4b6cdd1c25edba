"""Deterministic Mixpanel user profiles (Engage `$properties`), generated on the fly from a profile index.

Which profiles exist (derived from sandbox.data so `$distinct_id`s match the generated events):
    The events use device indexes d in range(n_devices), n_devices = max(8, events_per_day // 5); device d is
    identified as `user_{d // 2}@example.com` when d % 5 < 3. So user k owns devices 2k and 2k+1 and
    appears in events iff one of them is < n_devices with d % 5 < 3:
      k % 5 == 4 never (2k % 5 == 3 and (2k+1) % 5 == 4),
      k % 5 == 2 only through device 2k+1 (needs 2k+1 < n_devices),
      otherwise through device 2k (needs 2k < n_devices).
    In increasing order the valid k are k(i) = 5 * (i // 4) + i % 4 (skipping k % 5 == 4), and the ones
    inside the events form a prefix of that sequence. Profile i < n_users is user k(i); `cfg.profiles`
    overrides n_users (larger values extend the same sequence to users that have no events yet).
    Then `cfg.anonymous_profiles` profiles of never-identified devices d(j) = 5 * (j // 2) + 3 + j % 2
    (d % 5 in {3, 4}) with the events' anonymous distinct_id: `$device:<id>` (simplified ID merge) or the
    raw device id (original ID merge).

A profile's properties are a list of (key, JSON member text) pairs: the served `$properties` text is the
members joined with "," inside braces, so output_properties filtering keeps the exact text of each member.
Most members come from segments pre-serialised once per seed; per profile we hash (seed, index) once and
format a few variable members. To keep the unfiltered path fast a profile is a list of "parts": a part is
either one pair or a whole segment `(its pairs, their joined text)`; `expand` flattens parts into pairs.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from typing import Any

import xxhash

from sandbox.config import ProjectConfig
from sandbox.data import anon_id, device_id
from sandbox.payloads import BIG_INTS, CITIES, EDGE_NUMBERS, LOREM, WORDS
from sandbox.people_where import Pair, parse_people_where

# A segment: (pairs, the pairs' members joined by ","), pre-serialised once per seed.
Segment = tuple[tuple[Pair, ...], str]
# One pair, or a whole segment (its key slot holds the segment's pairs).
Part = tuple[str | tuple[Pair, ...], str]

POOL = 64
MASK6 = POOL - 1
# Profile timestamps fall in a fixed window so a profile depends only on (seed, index), not on "today".
BASE_DAY = date(2023, 1, 1)
CREATED_BITS = 25  # ~388 days of seconds
SEEN_BITS = 22  # $last_seen is up to ~48 days after $created
CREATED_MASK = (1 << CREATED_BITS) - 1
SEEN_MASK = (1 << SEEN_BITS) - 1
BIO_MASK = (1 << 8) - 1  # one profile in 256 carries a ~5 KB `bio`
VALUE_MASK = (1 << 39) - 1
BIG_BASE = 2**70
NAMES = [
    ("Zoë", "Müller"),
    ("山田", "太郎"),
    ("José", "Núñez"),
    ("Ægir", "Þórsson"),
    ("Олег", "Иванов"),
    ("أحمد", "حسن"),
    ("Chloé", "O'Brien"),
    ("Sam", '"The Rock" Lee'),
    ("😀", "Emoji 🚀"),
    ("Ngọc", "Trần"),
    ("François", "L\\Écuyer"),
    ("Ana", ""),
]
TIMEZONES = ["Europe/Zurich", "Asia/Tokyo", "America/Sao_Paulo", "Africa/Cairo", "Asia/Jerusalem", None]
OS = ["Mac OS X", "Windows", "iOS", "Android", "Linux"]
BROWSERS = ["Chrome", "Safari", "Firefox", "Edge", None]


def user_key(i: int) -> int:
    """The k of `user_{k}@example.com` for the i-th user profile (k % 5 == 4 never occurs in events)."""
    return 5 * (i // 4) + i % 4


def anonymous_device(j: int) -> int:
    """The device index of the j-th anonymous profile: devices with d % 5 in {3, 4} never log in."""
    return 5 * (j // 2) + 3 + j % 2


def user_index(k: int) -> int | None:
    """Inverse of `user_key`, None for keys no profile uses."""
    return None if k % 5 == 4 else 4 * (k // 5) + k % 5


def n_devices(cfg: ProjectConfig) -> int:
    return max(8, cfg.events_per_day // 5)  # as in sandbox.data._DayGenerator


def user_in_events(k: int, devices: int) -> bool:
    return any(d < devices and d % 5 < 3 for d in (2 * k, 2 * k + 1))


def event_users(cfg: ProjectConfig) -> int:
    """How many distinct user ids the events config can produce (a prefix of the `user_key` sequence)."""
    devices = n_devices(cfg)
    return sum(1 for k in range(devices // 2 + 1) if user_in_events(k, devices))


def _member(key: str, value: Any, ascii_only: bool = False) -> Pair:
    text = json.dumps({key: value}, ensure_ascii=ascii_only, separators=(",", ":"))
    return key, text[1:-1]


def _segment(values: dict[str, Any], ascii_only: bool) -> Segment:
    pairs = tuple(_member(k, v, ascii_only) for k, v in values.items())
    return pairs, ",".join(member for _, member in pairs)


def _name(rng: random.Random) -> dict[str, Any]:
    first, last = rng.choice(NAMES)
    return {"$first_name": first, "$last_name": last or None, "$name": f"{first} {last}".strip()}


def _place(rng: random.Random) -> dict[str, Any]:
    city, region, country = rng.choice(CITIES)
    return {"$city": city, "$region": region, "$country_code": country, "$timezone": rng.choice(TIMEZONES)}


def _device(rng: random.Random) -> dict[str, Any]:
    return {"$os": rng.choice(OS), "$browser": rng.choice(BROWSERS), "$browser_version": rng.random() * 100}


def _misc(rng: random.Random) -> dict[str, Any]:
    return {
        "plan": rng.choice(["free", "pro", "enterprise", None]),
        "preferences": {
            "newsletter": rng.random() < 0.5,
            "channels": rng.sample(["email", "push", "sms", "in-app"], rng.randint(0, 3)),
            "limits": {"daily": rng.randint(1, 50), "quiet_hours": [22, 7], "locale": rng.choice(WORDS)},
        },
        "tags": rng.sample(WORDS, 2),
        "score": rng.choice(EDGE_NUMBERS),
        "signed_big": rng.choice(BIG_INTS),
        "deleted_at": None,
        "referrer": rng.choice(["https://www.google.com/", "$direct", None]),
    }


@dataclass(frozen=True)
class Pools:
    names: tuple[Segment, ...]
    places: tuple[Segment, ...]
    devices: tuple[Segment, ...]
    misc: tuple[Segment, ...]
    bio: Pair
    dates: tuple[str, ...]
    minutes: tuple[str, ...]  # "HH:MM" by minute of the day: cheaper than formatting per profile
    seconds: tuple[str, ...]


def _pool(rng: random.Random, make: Callable[[random.Random], dict[str, Any]]) -> tuple[Segment, ...]:
    # ~30% of fragments use \u escapes: both spellings of the same text must survive a pipeline.
    return tuple(_segment(make(rng), rng.random() < 0.3) for _ in range(POOL))


@lru_cache(maxsize=16)
def people_pools(seed: int) -> Pools:
    rng = random.Random(f"people:{seed}")
    bio = _member("bio", ("Grüße aus 東京 🚀 " + LOREM + "\n") * 23)  # ~5 KB of text
    days = 1 + (CREATED_MASK + SEEN_MASK) // 86400
    dates = tuple((BASE_DAY + timedelta(days=d)).isoformat() for d in range(days))
    minutes = tuple(f"{m // 60:02d}:{m % 60:02d}" for m in range(1440))
    seconds = tuple(f"{s:02d}" for s in range(60))
    segments = (_pool(rng, _name), _pool(rng, _place), _pool(rng, _device), _pool(rng, _misc))
    return Pools(*segments, bio, dates, minutes, seconds)


class PeopleModel:
    """The profiles of one config: count, ids and properties by index."""

    def __init__(self, cfg: ProjectConfig) -> None:
        self.seed = cfg.seed
        self.pools = people_pools(cfg.seed)
        self.devices = n_devices(cfg)
        self.in_events = event_users(cfg)
        self.users = cfg.profiles if cfg.profiles is not None else self.in_events
        self.total = self.users + cfg.anonymous_profiles
        self.simplified = cfg.identity_mode == "simplified"

    def _iso(self, seconds: int) -> str:
        pools = self.pools
        day, rest = divmod(seconds, 86400)
        return f"{pools.dates[day]}T{pools.minutes[rest // 60]}:{pools.seconds[rest % 60]}"

    def _user_devices(self, i: int, k: int) -> list[str]:
        # Users beyond the events extend the device sequence without the n_devices cap.
        cap = self.devices if i < self.in_events else 1 << 62
        return [device_id(self.seed, d) for d in (2 * k, 2 * k + 1) if d % 5 < 3 and d < cap]

    def distinct_id(self, i: int) -> str:
        if i < self.users:
            return f"user_{user_key(i)}@example.com"
        device = anonymous_device(i - self.users)
        return f"$device:{device_id(self.seed, device)}" if self.simplified else anon_id(self.seed, device)

    def parts(self, i: int) -> tuple[str, list[Part]]:
        """(distinct_id, properties as parts in served order); see the module docstring."""
        pools = self.pools
        h = xxhash.xxh3_128_intdigest(b"%d:profile:%d" % (self.seed, i))
        distinct = self.distinct_id(i)
        parts: list[Part]
        if i < self.users:
            devices = self._user_devices(i, user_key(i))
            parts = [("$email", f'"$email":"{distinct}"'), pools.names[h & MASK6]]
        else:
            devices = [device_id(self.seed, anonymous_device(i - self.users))]
            parts = []
        created = (h >> 24) & CREATED_MASK
        seen = created + ((h >> 49) & SEEN_MASK)
        # Numbers as strings (SDKs send them), a float with ~17 significant digits, an integer beyond 2**64.
        value = ((h >> 89) & VALUE_MASK) / 7_000_003
        parts += (
            ("$created", f'"$created":"{self._iso(created)}"'),
            ("$last_seen", f'"$last_seen":"{self._iso(seen)}"'),
            pools.places[(h >> 6) & MASK6],
            pools.devices[(h >> 12) & MASK6],
            pools.misc[(h >> 18) & MASK6],
            ("orders", f'"orders":"{(h >> 71) & 1023}"'),
            ("lifetime_value", f'"lifetime_value":{value!r}'),
            ("account_id", f'"account_id":{BIG_BASE + (h & 0xFFFFFFFF) * 7919}'),
            ("devices", '"devices":["' + '","'.join(devices) + '"]' if devices else '"devices":[]'),
        )
        if (h >> 81) & BIO_MASK == 0:
            parts.append(pools.bio)
        return distinct, parts

    def profile(self, i: int) -> tuple[str, list[Pair]]:
        """(distinct_id, properties as (key, member text) pairs in served order)."""
        distinct, parts = self.parts(i)
        return distinct, expand(parts)


def expand(parts: Iterable[Part]) -> list[Pair]:
    pairs: list[Pair] = []
    for key, text in parts:
        if isinstance(key, str):
            pairs.append((key, text))
        else:
            pairs += key
    return pairs


@lru_cache(maxsize=16)
def people_model(cfg: ProjectConfig) -> PeopleModel:
    return PeopleModel(cfg)


def properties_text(parts: Sequence[Part], wanted: frozenset[str] | None = None) -> str:
    """The exact `$properties` JSON text; with `wanted`, only those keys (in served order)."""
    if wanted is None:
        return "{" + ",".join([text for _, text in parts]) + "}"
    return "{" + ",".join([member for key, member in expand(parts) if key in wanted]) + "}"


def iter_profiles(
    cfg: ProjectConfig, indexes: Iterable[int], wanted: frozenset[str] | None = None
) -> Iterator[tuple[str, str]]:
    """(distinct_id, `$properties` text) for each profile index."""
    model = people_model(cfg)
    for i in indexes:
        distinct, parts = model.parts(i)
        yield distinct, properties_text(parts, wanted)


def profile_lines(
    cfg: ProjectConfig, start: int, stop: int, output_properties: Sequence[str] | None = None
) -> list[tuple[str, bytes]]:
    """(distinct_id, exact `$properties` JSON bytes) of profiles start..stop-1 (clipped to the total)."""
    wanted = None if output_properties is None else frozenset(output_properties)
    stop = min(stop, people_model(cfg).total)
    return [(d, text.encode()) for d, text in iter_profiles(cfg, range(start, stop), wanted)]


def profile_hash(distinct_id: str, properties: bytes) -> int:
    return xxhash.xxh3_64_intdigest(properties, seed=xxhash.xxh3_64_intdigest(distinct_id.encode()))


def match_indexes(
    cfg: ProjectConfig, where: str | None = None, distinct_ids: Sequence[str] | None = None
) -> Iterator[int]:
    """Indexes of the profiles selected by `distinct_ids` and `where`, in served order."""
    model = people_model(cfg)
    candidates: Iterable[int] = (
        range(model.total) if distinct_ids is None else ids_to_indexes(cfg, distinct_ids)
    )
    if not where:
        yield from candidates
        return
    predicate = parse_people_where(where)
    for i in candidates:
        if predicate(model.profile(i)[1]):
            yield i


def people_fingerprint(
    cfg: ProjectConfig,
    where: str | None = None,
    output_properties: Sequence[str] | None = None,
    distinct_ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """{"rows", "fingerprint"}: sum mod 2**64 of per-profile xxh3 hashes of the served `$properties` text."""
    wanted = None if output_properties is None else frozenset(output_properties)
    rows = total = 0
    for distinct, text in iter_profiles(cfg, match_indexes(cfg, where, distinct_ids), wanted):
        total += profile_hash(distinct, text.encode())
        rows += 1
    return {"rows": rows, "fingerprint": f"{total & 0xFFFFFFFFFFFFFFFF:016x}"}


@lru_cache(maxsize=4)
def _anonymous_ids(cfg: ProjectConfig) -> dict[str, int]:
    model = people_model(cfg)
    return {model.distinct_id(i): i for i in range(model.users, model.total)}


def ids_to_indexes(cfg: ProjectConfig, distinct_ids: Iterable[str]) -> list[int]:
    """Sorted, de-duplicated profile indexes of the known ids among `distinct_ids` (unknown ids are skipped)."""
    model = people_model(cfg)
    found: set[int] = set()
    for distinct in distinct_ids:
        i = _user_profile(distinct, model.users)
        if i is None and model.total > model.users:
            i = _anonymous_ids(cfg).get(distinct)
        if i is not None:
            found.add(i)
    return sorted(found)


def _user_profile(distinct: str, users: int) -> int | None:
    prefix, suffix = "user_", "@example.com"
    if not (distinct.startswith(prefix) and distinct.endswith(suffix)):
        return None
    digits = distinct[len(prefix) : -len(suffix)]
    if not digits.isdigit() or digits != str(int(digits)):
        return None  # "user_007@..." is not an id we generate
    i = user_index(int(digits))
    return i if i is not None and i < users else None
