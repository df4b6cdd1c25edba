"""One identity per table: a table belongs to (destination root, project, table name), that is, one location.

Catalogs find tables by name (an Iceberg catalog by namespace and name, Glue by database and name),
so two destinations given the same catalog and namespace would otherwise find, overwrite and expire
each other's tables. Invariants:

* every table found by name is passed through ``check_location`` before anything is read from or
  written to it: it must be located where this destination's table must be (``within``: at or
  under it, for Glue tables whose location moves between run folders inside it), compared as
  normalised URIs; otherwise ``TableIdentityError`` names both locations and nothing is changed.
* what a table records about itself where another destination could also write it (Iceberg table
  properties) is keyed by ``owner_key`` of this destination's location, so no destination ever
  reads another's.
* a location with a ``..`` segment never matches: in a bucket it is a literal key, on a disk it
  leaves the folder, and either way it is not where our table must be.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit

from tasks.errors import TableIdentityError


def normal_location(uri: str) -> str:
    """``uri`` in one spelling: ``file:`` URIs as plain paths, ``s3a``/``s3n`` as ``s3``, no ``.``
    segments, no doubled or trailing slashes."""
    text = uri.strip()
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme in ("", "file"):
        prefix, path = "", parts.path if scheme else text
    else:
        scheme = "s3" if scheme in ("s3a", "s3n") else scheme
        prefix, path = f"{scheme}://{parts.netloc}", parts.path
    segments = [s for s in re.split("/+", path) if s not in ("", ".")]
    return prefix + "/" + "/".join(segments) if segments or not prefix else prefix


def located_at(found: str, expected: str, within: bool = False) -> bool:
    """Whether ``found`` is the location ``expected`` (or, ``within``, a folder inside it)."""
    have, want = normal_location(found), normal_location(expected)
    if "/../" in f"{have}/":
        return False
    return have == want or (within and have.startswith(want.rstrip("/") + "/"))


def check_location(what: str, found: str | None, expected: str, remedy: str, within: bool = False) -> None:
    """Refuse, in one sentence, a table found by name that is not located where ours must be."""
    if found and located_at(found, expected, within):
        return
    raise TableIdentityError(
        f"{what} is located at {found or 'no location'}, outside this destination's {expected} (another "
        f"destination's or project's table of the same name): nothing was changed; {remedy}."
    )


def owner_key(location: str) -> str:
    """A short stable key of a destination's (root, project) location, for what a table records about itself."""
    return hashlib.sha256(normal_location(location).encode()).hexdigest()[:12]
