"""Link extraction: every string in a record that is an at-uri, a DID or an absolute URL.

Paths use Constellation's syntax: ``.subject.uri``, ``[]`` for array elements, and
``[<$type>]`` for array elements that are objects carrying a ``$type``, e.g.
``.facets[].features[app.bsky.richtext.facet#mention].did``.
"""

from __future__ import annotations

import re
from typing import Any

_AT_URI = re.compile(r"at://\S+\Z")
_DID = re.compile(r"did:[a-z]+:[A-Za-z0-9._:%-]*[A-Za-z0-9._%-]\Z")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#]+\S*\Z")
MAX_LINK_LENGTH = 2048
MAX_DEPTH = 32


def is_link(value: str) -> bool:
    """True when the whole string is an at-uri, a DID or an absolute URL."""
    if value.startswith("at://"):
        return len(value) <= MAX_LINK_LENGTH and _AT_URI.match(value) is not None
    if value.startswith("did:"):
        return len(value) <= MAX_LINK_LENGTH and _DID.match(value) is not None
    if "://" in value:
        return len(value) <= MAX_LINK_LENGTH and _URL.match(value) is not None
    return False


def extract_links(record: Any) -> list[tuple[str, str]]:
    """Return the distinct (path, target) pairs of a decoded record, in document order.

    A record counts once per (target, path) even if that path holds the target
    several times (two mentions of one DID in a post are one link).
    """
    found: dict[tuple[str, str], None] = {}
    _walk(record, "", found, 0)
    return list(found)


def _walk(value: Any, path: str, found: dict[tuple[str, str], None], depth: int) -> None:
    if depth > MAX_DEPTH:
        return
    if isinstance(value, str):
        if is_link(value):
            found[(path, value)] = None
    elif isinstance(value, dict):
        for key, child in value.items():
            if type(child) is str:
                # Most strings are text, dates and CIDs: reject them before building a path.
                if key != "$type" and (child.startswith(("at://", "did:")) or "://" in child) and is_link(child):
                    found[(f"{path}.{key}", child)] = None
            elif isinstance(child, (dict, list)):
                _walk(child, f"{path}.{key}", found, depth + 1)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                kind = item.get("$type")
                element = f"{path}[{kind}]" if isinstance(kind, str) else f"{path}[]"
            else:
                element = f"{path}[]"
            _walk(item, element, found, depth + 1)
