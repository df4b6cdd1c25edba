"""A tiny subset of Mixpanel's segmentation `where` expressions, enough for incremental sync.

Supported atoms, joined with `and` and `or` (`and` binds tighter), grouped with parentheses:
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


def _split_top(text: str, word: str) -> list[str]:
    """``text`` cut at each `` word `` outside parentheses."""
    parts, depth, start, i = [], 0, 0, 0
    token = f" {word} "
    while i < len(text):
        ch = text[i]
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and text.startswith(token, i):
            parts.append(text[start:i])
            start = i = i + len(token)
            continue
        i += 1
    parts.append(text[start:])
    return parts


def _compile(text: str) -> Predicate:
    text = _strip_parens(re.sub(r"\s+", " ", text))
    for word, combine in (("or", any), ("and", all)):
        parts = _split_top(text, word)
        if len(parts) > 1:
            predicates = [_compile(part) for part in parts]
            return lambda props, ps=predicates, c=combine: c(p(props) for p in ps)  # type: ignore[misc]
    key, op, bound = _atom(text)
    return lambda props: _compare(props, key, op, bound)


def parse_where(expression: str) -> Predicate:
    """Compile `expression` into a predicate over a parsed properties dict; raises WhereError."""
    if not _strip_parens(expression):
        raise WhereError("empty where expression")
    return _compile(expression)
