"""A tiny subset of Mixpanel's segmentation `where` expressions, enough for incremental sync.

Supported atoms, joined with `and`:
    properties["time"] >= datetime(<int seconds>)            (also >, <, <=)
    number(properties["mp_processing_time_ms"]) > <int>      (also >=, <, <=)
`time` is compared as served: for local-time projects that is the "local epoch", as Mixpanel does.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

Predicate = Callable[[dict[str, Any]], bool]

OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}
_OP = r"(>=|<=|>|<)"
_TIME = re.compile(rf'^properties\["time"\]\s*{_OP}\s*datetime\(\s*(-?\d+)\s*\)$')
_PROCESSED = re.compile(rf'^number\(\s*properties\["mp_processing_time_ms"\]\s*\)\s*{_OP}\s*(-?\d+)$')
_AND = re.compile(r"\s+and\s+")


class WhereError(ValueError):
    pass


def _wrapped(text: str) -> bool:
    """True when the first "(" closes at the very end, e.g. "(a and b)" but not "(a) and (b)"."""
    depth = 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return i == len(text) - 1
    return False


def _strip_parens(text: str) -> str:
    text = text.strip()
    while text.startswith("(") and _wrapped(text):
        text = text[1:-1].strip()
    return text


def _atom(text: str) -> tuple[str, Callable[[Any, Any], bool], int]:
    text = _strip_parens(text)
    for key, pattern in (("time", _TIME), ("mp_processing_time_ms", _PROCESSED)):
        m = pattern.match(text)
        if m:
            return key, OPS[m.group(1)], int(m.group(2))
    raise WhereError(f"unsupported where atom: {text!r}")


def _compare(props: dict[str, Any], key: str, op: Callable[[Any, Any], bool], bound: int) -> bool:
    value = props.get(key)
    try:
        return value is not None and op(float(value), bound)
    except (TypeError, ValueError):
        return False


def parse_where(expression: str) -> Predicate:
    """Compile `expression` into a predicate over a parsed properties dict; raises WhereError."""
    text = _strip_parens(expression)
    if not text:
        raise WhereError("empty where expression")
    atoms = [_atom(part) for part in _AND.split(text)]

    def predicate(props: dict[str, Any]) -> bool:
        return all(_compare(props, key, op, bound) for key, op, bound in atoms)

    return predicate
