"""Derive ``mp_identity_mappings_data(distinct_id, resolved_distinct_id)`` from merge events.

Mixpanel has no API for identity mappings, so we rebuild them in two steps:

1. ``edges_from_events`` turns one day's events into a small frame of merge *edges* (stored per day
   beside the data, so a re-exported day simply replaces its edges);
2. ``resolve`` replays the union of all days' edges through a union-find and emits one row per id
   of every cluster of two or more ids (the canonical id maps to itself too).

Edge frame (``EDGE_SCHEMA``), one row per implied merge:

==============  =======================  ==============================================
kind            a                        b
==============  =======================  ==============================================
device_user     ``"$device:" + device``  ``user_id`` (the event's ``$user_id``)
identify        ``$anon_id``             ``$identified_id``
alias           ``alias``                ``distinct_id`` (the alias target)
merge           first of ``$distinct_ids``  each other id of that list (one row each)
==============  =======================  ==============================================

plus ``time`` (event time, Datetime us UTC) and ``insert_id`` (nullable, tie-breaker). Rows of one
``$merge`` event share ``(time, insert_id, a)``; ``resolve`` applies such a run as one merge.

Edges are replayed in a total order, so a re-exported day gives the same answer whatever the row
order: ``time``, then kind (device_user, identify, alias, merge), then ``insert_id`` (nulls last),
then ``a``, then ``b``. Edges of kinds the mode does not use are ignored.

Rules per mode (``IdentityMode``):

* ``simplified`` (Simplified ID Merge): an event carrying both ``$device_id`` and ``$user_id``
  merges ``$device:<device_id>`` into the user. The first user a device is seen with wins; a later
  edge of that device with another user is ignored, so two user ids never merge. Unlimited devices
  per user, no cluster cap. Canonical id: the user id.
* ``original`` (Original ID Merge), explicit events only (device/user pairs are *not* merges here):

  - ``$identify`` merges nothing when its ``$anon_id`` (after removing a ``$device:`` prefix) is
    not a UUID v4 (Create Identity: "The $anon_id must be UUID v4 format"; Mixpanel refuses others
    with ``errAnonDistinctIdNonGUIDForm``; see ``is_uuid4``). Otherwise it merges the anon cluster
    into the identified one, unless the anon's cluster already holds an identified id (a ``$identified_id`` or alias target of an accepted edge;
    ids only listed in a ``$merge`` do not count) other than ``$identified_id``: then it is
    ignored. Many anon ids may join one identified id;
  - ``$create_alias``: an alias points to one id only; once accepted, later aliases of the same id
    are ignored;
  - ``$merge`` joins the clusters of all listed ids, all or nothing;
  - any merge that would make a cluster larger than ``max_cluster`` (500) ids is ignored entirely.

  Mixpanel's own canonical choice is not reproducible, so ours is: rank every member by
  (tier, since, id) and take the smallest. Tier 0 = identified (``$identified_id`` or alias
  target of an accepted edge); tier 1 = listed in an accepted ``$merge``; tier 2 = anything else.
  ``since`` = index, in replay order, of the first accepted edge that gave the id its tier (i.e. the
  id that entered the cluster as identified first); ties, and tier 2, fall back to string order.
  (Every accepted edge marks an id tier 0 or 1, so a tier-2-only cluster cannot actually occur.)
  An accepted edge whose ids already share a cluster is a no-op merge that still marks tiers.
* ``legacy`` (alias-only): only ``$create_alias``; first alias wins; an alias that would close a
  cycle is ignored. Canonical id: the root of the alias chain (follow alias -> distinct_id until
  an id that is not itself an alias). No cluster cap.

Empty ids and self-edges (a == b) are dropped when edges are built; null ids when resolving.
Edges are facts (what the events said); the UUID rule of ``$identify`` is applied when resolving,
so edges stored by older versions resolve the same way.

Complexity: for E edges over N ids, sorting and interning are O(E log E) in polars (ids become
integers by dense rank, so integer order is string order); the replay is one Python loop over the
edges with union by size and path compression, O((E + N) α(N)). Measured: about 2 µs per edge
end to end (3M edges over 3.3M ids in 6-8 s on a shared 2-core box).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import polars as pl

from tasks.schema import MAPPINGS_FRAME_SCHEMA

IdentityMode = Literal["simplified", "original", "legacy"]

TIME = pl.Datetime("us", "UTC")
EDGE_SCHEMA = pl.Schema(  # instances, as the Schema keeps them, so the mapping types as one dtype
    {"kind": pl.String(), "a": pl.String(), "b": pl.String(), "time": TIME, "insert_id": pl.String()}
)

KINDS = ("device_user", "identify", "alias", "merge")
KIND_ORDER = {kind: rank for rank, kind in enumerate(KINDS)}
DEVICE_USER, IDENTIFY, ALIAS, MERGE = range(4)
DEVICE_PREFIX = "$device:"
MODE_KINDS: dict[str, tuple[str, ...]] = {
    "simplified": ("device_user",),
    "original": ("identify", "alias", "merge"),
    "legacy": ("alias",),
}
MODE_EVENTS: dict[str, dict[str, str]] = {
    "original": {"$identify": "identify", "$create_alias": "alias", "$merge": "merge"},
    "legacy": {"$create_alias": "alias"},
}
MAX_CLUSTER = 500
# The canonical text of a UUID v4 (RFC 9562: 8-4-4-4-12 hex digits, version nibble 4, variant 10xx),
# hex in either case, optionally after the `$device:` prefix SDKs put on anonymous ids. Braces, a
# `urn:uuid:` prefix, 32 digits without dashes and other versions (v1, v7, nil) are refused.
UUID4_ANON_ID = (
    r"^(?:\$device:)?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$"
)
_UUID4_RE = re.compile(UUID4_ANON_ID)
_MISSING = msgspec.Raw()


class _MergeProps(msgspec.Struct, gc=False):
    """The properties of the three explicit merge events; values kept raw so numeric ids keep
    their exact JSON text (Mixpanel accepts ``"distinct_id": 12345``)."""

    anon_id: msgspec.Raw = msgspec.field(default=_MISSING, name="$anon_id")
    identified_id: msgspec.Raw = msgspec.field(default=_MISSING, name="$identified_id")
    alias: msgspec.Raw = _MISSING
    distinct_id: msgspec.Raw = _MISSING
    distinct_ids: msgspec.Raw = msgspec.field(default=_MISSING, name="$distinct_ids")


_PROPS_DECODER = msgspec.json.Decoder(_MergeProps)
_RAW_LIST_DECODER = msgspec.json.Decoder(list[msgspec.Raw])


def is_uuid4(anon_id: str | None) -> bool:
    """Whether ``$identify`` may merge this ``$anon_id`` (Original ID Merge's UUID v4 rule)."""
    return anon_id is not None and _UUID4_RE.fullmatch(anon_id) is not None


# --------------------------------------------------------------------------- edges from events


def edges_from_events(frame: pl.DataFrame, mode: IdentityMode) -> pl.DataFrame:
    """The merge edges one day's events imply (see the module docstring for a/b per kind)."""
    return edges_query(frame, mode).collect()


def edges_query(frame: pl.DataFrame, mode: IdentityMode) -> pl.LazyFrame:
    """``edges_from_events`` as a query, for a caller that collects it with others."""
    simplified = mode == "simplified"
    edges = _device_user_edges(frame) if simplified else _explicit_edges(frame, MODE_EVENTS[mode]).lazy()
    return edges.filter((pl.col("a") != "") & (pl.col("b") != "") & (pl.col("a") != pl.col("b"))).select(
        EDGE_SCHEMA.names()
    )


def _device_user_edges(frame: pl.DataFrame) -> pl.LazyFrame:
    # Simplified ID Merge: any event with both ids links the device to the user. Logged-in traffic
    # repeats the pair on every event, so keep one edge per pair: the earliest (then insert_id).
    return (
        frame.lazy()
        .filter(pl.col("device_id").is_not_null() & pl.col("user_id").is_not_null())
        .filter(pl.col("device_id") != "")
        .select(
            pl.lit("device_user").alias("kind"),
            (pl.lit(DEVICE_PREFIX) + pl.col("device_id")).alias("a"),
            pl.col("user_id").alias("b"),
            pl.col("time").cast(TIME),
            pl.col("insert_id"),
        )
        .sort(["time", "insert_id"], nulls_last=True)
        .unique(subset=["kind", "a", "b"], keep="first", maintain_order=True)
    )


def _explicit_edges(frame: pl.DataFrame, events: dict[str, str]) -> pl.DataFrame:
    # Vectorised filter first: a day holds millions of events and a handful of merge events, so
    # only those few rows ever reach Python and the JSON decoder.
    rows = frame.filter(pl.col("event_name").is_in(list(events))).select(
        "event_name", "properties", pl.col("time").cast(TIME), "insert_id"
    )
    out: list[tuple[str, str, str, Any, str | None]] = []
    for name, props, time, insert_id in rows.iter_rows():
        for a, b in _event_pairs(events[name], props):
            out.append((events[name], a, b, time, insert_id))
    # Only exact duplicate rows (a duplicated event) are dropped: replaying the same merge at
    # another time could matter (e.g. an all-or-nothing $merge that was refused earlier).
    return pl.DataFrame(out, schema=EDGE_SCHEMA, orient="row").unique(maintain_order=True)


def _event_pairs(kind: str, properties: str | None) -> list[tuple[str, str]]:
    """(a, b) pairs of one merge event; [] when a property is missing or not an id."""
    if properties is None:
        return []
    try:
        props = _PROPS_DECODER.decode(properties)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return []
    if kind == "identify":
        return _pair(_id_text(props.anon_id), _id_text(props.identified_id))
    if kind == "alias":
        return _pair(_id_text(props.alias), _id_text(props.distinct_id))
    return _merge_pairs(props.distinct_ids)


def _pair(a: str | None, b: str | None) -> list[tuple[str, str]]:
    return [(a, b)] if a is not None and b is not None else []


def _merge_pairs(raw: msgspec.Raw) -> list[tuple[str, str]]:
    # $merge lists 2+ ids; one edge from the first id to each other (distinct) id. One bad
    # element voids the event: half a merge would be a merge Mixpanel never made.
    if not len(raw):
        return []
    try:
        items = _RAW_LIST_DECODER.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return []
    ids = [_id_text(item) for item in items]
    if any(i is None for i in ids):
        return []
    unique = list(dict.fromkeys(i for i in ids if i is not None))
    return [(unique[0], other) for other in unique[1:]]


def _id_text(raw: msgspec.Raw) -> str | None:
    """An id as text: strings as-is, numbers as their exact JSON text, anything else None."""
    if not len(raw):
        return None
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return bytes(raw).decode().strip()
    return None


# --------------------------------------------------------------------------- union-find


class _Forest:
    """Union-find over integer ids: union by size, path compression."""

    __slots__ = ("parent", "size")

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def roots(self) -> pl.Series:
        """Every id's root, as codes."""
        find = self.find
        return pl.Series([find(x) for x in range(len(self.parent))], dtype=pl.Int64)

    def union(self, ra: int, rb: int) -> int:
        """Join two distinct roots; returns the surviving root."""
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        return ra


@dataclass
class _Edges:
    """Edges in replay order, ids interned to integers in string order: ``ids[code]`` is the text."""

    ids: pl.Series
    kind: list[int]
    a: list[int]
    b: list[int]
    group: list[int]  # original mode only: operation number, shared by the rows of one $merge


def refused_identifies() -> pl.Expr:
    """``$identify`` edges whose anon id is not a UUID v4: Mixpanel merges nothing for them."""
    return (pl.col("kind") == "identify") & ~pl.col("a").str.contains(UUID4_ANON_ID).fill_null(False)


def _prepare(edges: pl.DataFrame, mode: IdentityMode) -> _Edges:
    usable = pl.col("kind").is_in(MODE_KINDS[mode]) & pl.col("a").is_not_null() & pl.col("b").is_not_null()
    if mode == "original":
        usable = usable & ~refused_identifies()
    ordered = (
        edges.lazy()
        .filter(usable)
        .with_columns(pl.col("kind").replace_strict(KIND_ORDER, return_dtype=pl.Int8).alias("k"))
        .sort(["time", "k", "insert_id", "a", "b"], nulls_last=True)
        .collect()
    )
    if mode == "simplified":
        # A repeated (device, user) pair never changes the answer: the first one decides.
        ordered = ordered.unique(subset=["a", "b"], keep="first", maintain_order=True)
    ids, a, b = _intern(ordered["a"], ordered["b"])
    group = ordered.select(_group_expr().alias("g"))["g"].to_list() if mode == "original" else []
    return _Edges(ids, ordered["k"].to_list(), a, b, group)


def _intern(a: pl.Series, b: pl.Series) -> tuple[pl.Series, list[int], list[int]]:
    """Code = dense rank of the id's text, so integer order is string order; ``ids[code]``."""
    stacked = pl.concat([a, b.alias(a.name)])
    codes = (stacked.rank("dense") - 1).cast(pl.Int64)
    first = codes.arg_unique()  # one position per distinct id
    ids = stacked.gather(first.gather(codes.gather(first).arg_sort())).alias("id")
    return ids, codes.head(a.len()).to_list(), codes.tail(b.len()).to_list()


def _group_expr() -> pl.Expr:
    # Consecutive merge rows with the same (time, insert_id, a) came from one $merge event.
    same = pl.col("k").eq(MERGE) & pl.col("k").shift().eq(MERGE)
    for col in ("time", "insert_id", "a"):
        same = same & pl.col(col).eq_missing(pl.col(col).shift())
    return (~same.fill_null(False)).cum_sum()


# --------------------------------------------------------------------------- resolve


def resolve(edges: pl.DataFrame, mode: IdentityMode, max_cluster: int = MAX_CLUSTER) -> pl.DataFrame:
    """Mappings ``(distinct_id, resolved_distinct_id)`` for every id in a cluster of 2+ ids,
    sorted by (resolved_distinct_id, distinct_id)."""
    prepared = _prepare(edges, mode)
    forest = _Forest(prepared.ids.len())
    if mode == "original":
        state = _replay_original(prepared, forest, max_cluster)
        roots = forest.roots()
        label = _canonical(state, roots)
    else:
        replay = _replay_simplified if mode == "simplified" else _replay_legacy
        label = pl.Series(replay(prepared, forest), dtype=pl.Int64)
        roots = forest.roots()
    return _mappings(prepared.ids, roots, label)


def _replay_simplified(edges: _Edges, forest: _Forest) -> list[int]:
    """owner[root] = the user of that cluster (-1 while it has none)."""
    owner = [-1] * len(forest.parent)
    for device, user in zip(edges.a, edges.b, strict=True):
        rd, ru = forest.find(device), forest.find(user)
        if rd == ru:
            continue
        if owner[ru] == -1:
            owner[ru] = user
        if owner[rd] != -1 and owner[rd] != owner[ru]:
            continue  # the device already belongs to another user: users never merge
        owner[forest.union(rd, ru)] = owner[ru]
    return owner


def _replay_legacy(edges: _Edges, forest: _Forest) -> list[int]:
    """label[root] = the root of the alias chain (the one member that is not an alias)."""
    n = len(forest.parent)
    label = list(range(n))
    is_alias = [False] * n
    for alias, target in zip(edges.a, edges.b, strict=True):
        if is_alias[alias]:
            continue  # first alias wins
        # alias is not an alias yet, so it is its cluster's chain root; same cluster = a cycle.
        ra, rt = forest.find(alias), forest.find(target)
        if ra == rt:
            continue
        is_alias[alias] = True
        label[forest.union(ra, rt)] = label[rt]
    return label


@dataclass
class _Original:
    """Replay state of Original ID Merge."""

    forest: _Forest
    max_cluster: int
    identified: list[bool]  # per root: the cluster holds a tier-0 (identified) id
    aliased: list[bool]  # per id: it is an accepted alias
    tier: list[int]  # per id: 0 identified, 1 listed in a $merge, 2 other
    since: list[int]  # per id: operation that gave it its tier

    def pair(self, ra: int, rb: int) -> int | None:
        """Union two roots unless it would exceed the cap: the new root, or None if refused."""
        if ra == rb:
            return ra
        if self.forest.size[ra] + self.forest.size[rb] > self.max_cluster:
            return None
        return self._link(ra, rb)

    def join(self, roots: list[int]) -> int | None:
        """Union distinct roots, all or nothing: one cap check for the whole $merge."""
        if sum(self.forest.size[r] for r in roots) > self.max_cluster:
            return None
        keep = roots[0]
        for other in roots[1:]:
            keep = self._link(keep, other)
        return keep

    def _link(self, ra: int, rb: int) -> int:
        flag = self.identified[ra] or self.identified[rb]
        root = self.forest.union(ra, rb)
        self.identified[root] = flag
        return root

    def mark(self, node: int, tier: int, op: int) -> None:
        if tier < self.tier[node]:
            self.tier[node], self.since[node] = tier, op

    def identify(self, anon: int, known: int, op: int) -> None:
        ra, rk = self.forest.find(anon), self.forest.find(known)
        if ra != rk and self.identified[ra]:
            return  # anon is already merged with another identified id
        self._identified(known, self.pair(ra, rk), op)

    def alias(self, alias: int, target: int, op: int) -> None:
        if self.aliased[alias]:
            return  # one alias cannot point to two ids
        root = self.pair(self.forest.find(alias), self.forest.find(target))
        if root is not None:
            self.aliased[alias] = True
        self._identified(target, root, op)

    def merge(self, members: list[int], op: int) -> None:
        if self.join(list(dict.fromkeys(self.forest.find(m) for m in members))) is not None:
            for m in members:
                self.mark(m, 1, op)

    def _identified(self, node: int, root: int | None, op: int) -> None:
        if root is not None:
            self.mark(node, 0, op)
            self.identified[root] = True


def _replay_original(edges: _Edges, forest: _Forest, max_cluster: int) -> _Original:
    n = len(forest.parent)
    state = _Original(forest, max_cluster, [False] * n, [False] * n, [2] * n, [0] * n)
    kinds, a, b, group = edges.kind, edges.a, edges.b, edges.group
    i, total = 0, len(kinds)
    while i < total:  # i, the edge's index in replay order, numbers the operation
        if kinds[i] == MERGE:
            end = i + 1
            while end < total and group[end] == group[i]:
                end += 1
            state.merge([a[i], *b[i:end]], i)
            i = end
            continue
        (state.identify if kinds[i] == IDENTIFY else state.alias)(a[i], b[i], i)
        i += 1
    return state


def _canonical(state: _Original, roots: pl.Series) -> pl.Series:
    """label[root] = the member with the smallest (tier, since, code); tier 2 ignores since.
    Codes are in string order, so the last key is the id's text order."""
    tier = pl.Series(state.tier, dtype=pl.Int8)
    since = pl.Series(state.since, dtype=pl.Int64)
    best = (
        pl.DataFrame({"node": pl.int_range(roots.len(), eager=True, dtype=pl.Int64), "root": roots})
        .with_columns(tier=tier, since=pl.when(tier < 2).then(since).otherwise(0))
        .sort(["root", "tier", "since", "node"])
        .unique("root", keep="first")
    )
    return pl.int_range(roots.len(), eager=True, dtype=pl.Int64).scatter(best["root"], best["node"])


def _mappings(ids: pl.Series, roots: pl.Series, label: pl.Series) -> pl.DataFrame:
    """One row per id of a 2+ cluster; ``label`` gives each root's canonical id code."""
    resolved = ids.gather(label.gather(roots))
    return (
        pl.DataFrame({"distinct_id": ids, "resolved_distinct_id": resolved, "root": roots})
        .filter(pl.len().over("root") > 1)  # singletons are not mapped
        .select(MAPPINGS_FRAME_SCHEMA.names())
        .sort(["resolved_distinct_id", "distinct_id"])
    )


# --------------------------------------------------------------------------- user counts


def user_counts(events: pl.DataFrame, mappings: pl.DataFrame) -> tuple[int, int]:
    """(naive, resolved) user counts. Resolved follows Mixpanel's advice:
    ``COUNT(DISTINCT COALESCE(m.resolved_distinct_id, e.distinct_id))`` over
    ``events LEFT JOIN mappings USING (distinct_id)`` — an inner join would drop every user who
    never merged. Null and empty distinct_ids (hot-shard rows carry "") are not users."""
    ids = events.select("distinct_id").filter(
        pl.col("distinct_id").is_not_null() & (pl.col("distinct_id") != "")
    )
    naive = ids["distinct_id"].n_unique()
    joined = ids.join(mappings.select("distinct_id", "resolved_distinct_id"), on="distinct_id", how="left")
    resolved = joined.select(pl.coalesce("resolved_distinct_id", "distinct_id").n_unique()).item()
    return naive, int(resolved)
