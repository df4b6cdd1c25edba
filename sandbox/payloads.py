"""Pre-serialised property fragments that make generated lines look like real Mixpanel exports.

Serialising a fresh ~1 KB dict per line is too slow for benchmark-sized days, so each line is assembled
from a few variable fields plus one "device" and one "payload" fragment drawn from pools built once per seed.
A fragment is the JSON text of some key/value pairs without the surrounding braces.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

POOL_SIZE = 96

BROWSERS = [
    ("Chrome", "124.0"),
    ("Safari", "17.4"),
    ("Firefox", "125.0"),
    ("Edge", "124.0"),
    ("Opera", "109"),
]
SYSTEMS = ["Mac OS X", "Windows", "iOS", "Android", "Linux", "Chrome OS"]
# Unicode on purpose: accents, CJK, RTL, emoji; exporters that mangle encodings show up here.
CITIES = [
    ("Zürich", "Zurich", "CH"),
    ("東京", "Tokyo", "JP"),
    ("São Paulo", "São Paulo", "BR"),
    ("القاهرة", "Cairo", "EG"),
    ("תל אביב", "Tel Aviv", "IL"),
    ("Kraków", "Lesser Poland", "PL"),
    ("San Francisco", "California", "US"),
    ("Москва", "Moscow", "RU"),
    ("🏙️ Metropolis", "Nowhere", "ZZ"),
    (None, None, None),
]
# JSON corner cases that survive json.loads/dumps round trips only if the reader is careful.
EDGE_NUMBERS: list[Any] = [
    0.1,
    1.0000000000000002,
    1e-07,
    1.7976931348623157e308,
    -0.0,
    5e-324,
    123456789.123456789,
]
BIG_INTS = [2**70, -(2**65), 2**64, 2**63 - 1, -(2**63)]
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "δέλτα",
    "эпсилон",
    "ζ",
    "η",
    "θ",
    "naïve",
    "façade",
    "🎉",
    "中文",
    "עברית",
]
NOTES = [
    'He said "hi" and left',
    "back\\slash and /slash",
    "line one\nline two\ttabbed",
    "مرحبا بالعالم",
    "emoji 🚀🔥👍🏽 and zero-width\u200bjoiner",
    "control \u0001 char",
    "",
]
LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et "
    "dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip."
)


@dataclass(frozen=True)
class Pools:
    devices: tuple[str, ...]
    payloads: tuple[str, ...]
    blob: str  # rare ~10 KB string value


def _fragment(values: dict[str, Any], ascii_only: bool) -> str:
    return json.dumps(values, ensure_ascii=ascii_only, separators=(",", ":"))[1:-1]


def _device(rng: random.Random) -> dict[str, Any]:
    browser, version = rng.choice(BROWSERS)
    city, region, country = rng.choice(CITIES)
    return {
        "$browser": browser,
        "$browser_version": float(version) if rng.random() < 0.5 else version,
        "$os": rng.choice(SYSTEMS),
        "$city": city,
        "$region": region,
        "mp_country_code": country,
        "$screen_height": rng.choice([768, 900, 1080, 1440, 2532]),
        "$screen_width": rng.choice([1024, 1440, 1920, 2560, 1170]),
        "mp_lib": rng.choice(["web", "iphone", "android", "python"]),
        "$lib_version": f"2.{rng.randint(40, 60)}.{rng.randint(0, 9)}",
    }


def _nested(rng: random.Random) -> dict[str, Any]:
    return {
        "level1": {
            "level2": {"level3": [rng.randint(0, 9), rng.choice(WORDS), None, {"deep": True}]},
            "flag": rng.random() < 0.5,
        },
        "items": [{"sku": f"SKU-{rng.randint(1, 999):03d}", "qty": rng.randint(1, 5)} for _ in range(2)],
        "empty_obj": {},
        "empty_list": [],
    }


def _payload(rng: random.Random) -> dict[str, Any]:
    values: dict[str, Any] = {
        "plan": rng.choice(["free", "pro", "enterprise", None]),
        "count_str": str(rng.randint(0, 500)),  # numbers sent as strings by some SDKs
        "amount": round(rng.random() * 1000, 2),
        "edge_number": rng.choice(EDGE_NUMBERS),
        "big_int": rng.choice(BIG_INTS),
        "nested": _nested(rng),
        "tags": rng.sample(WORDS, 3),
        "note": rng.choice(NOTES),
        "Größe": rng.choice(["S", "M", "L"]),
        "nullable": None,
        "utm_source": rng.choice(["google", "newsletter", "twitter", None]),
        "utm_campaign": rng.choice(["spring_sale", "launch", "retarget"]),
        "$referrer": rng.choice(["https://www.google.com/", "$direct", "https://news.ycombinator.com/"]),
    }
    values["description"] = LOREM[: rng.randint(80, len(LOREM))]
    keys = list(values)
    rng.shuffle(keys)  # keys in no particular order, like real SDK payloads
    return {k: values[k] for k in keys}


@lru_cache(maxsize=16)
def pools(seed: int) -> Pools:
    rng = random.Random(f"pools:{seed}")
    devices = tuple(_fragment(_device(rng), rng.random() < 0.3) for _ in range(POOL_SIZE))
    payloads = tuple(_fragment(_payload(rng), rng.random() < 0.3) for _ in range(POOL_SIZE))
    blob = _fragment({"big_text": ("Größe 東京 " + LOREM) * 45}, False)
    return Pools(devices=devices, payloads=payloads, blob=blob)
