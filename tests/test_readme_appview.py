"""README's lists of bsky.Service methods (implemented, answered empty, unimplemented) are
what the server does: each name in its list, every method of the service in exactly one."""

from __future__ import annotations

import re
from pathlib import Path

from smalldp.appview.proto import bsky_pb2
from smalldp.appview.rpcs import handlers

README = Path(__file__).resolve().parents[1] / "README.md"


def _section() -> str:
    text = README.read_text()
    start = text.index("### The official AppView (bsky.Service)")
    return text[start:text.index("\n### ", start + 10)]


def _names(after: str, section: str) -> set[str]:
    """Backquoted method names from the paragraph starting with ``after`` to the next blank line."""
    start = section.index(after)
    end = section.index("\n\n", start)
    return set(re.findall(r"`([A-Z][A-Za-z]+)`", section[start:end]))


def test_readme_lists_every_method_as_the_server_answers_it() -> None:
    sync, async_ = handlers()
    methods = {m.name for m in bsky_pb2.DESCRIPTOR.services_by_name["Service"].methods}
    registered = {**sync, **async_}
    empty = {m for m, fn in registered.items() if fn.__module__.endswith(".empty") and m != "Ping"}
    section = _section()
    listed_impl = _names("**Implemented**", section)
    listed_empty = _names("**Answered empty**", section)
    listed_un = _names("**Unimplemented**", section)
    assert listed_impl == set(registered) - empty
    assert listed_empty == empty
    assert listed_un == methods - set(registered)
    assert listed_impl | listed_empty | listed_un == methods
    assert not (listed_impl & listed_empty) and not (listed_un & (listed_impl | listed_empty))
