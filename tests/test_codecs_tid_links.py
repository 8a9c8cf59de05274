"""TID parsing and link extraction against plain reference implementations written here.

``tid_to_int`` validates with one bytes.translate and int(); ``extract_links`` walks
dicts and lists without a call per string. Both must give exactly what the obvious
versions give, including which inputs they reject and the depth limit.
"""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from smalldp.links import MAX_DEPTH, extract_links, link_form
from smalldp.tid import int_to_tid, tid_to_int

_SORTABLE = "234567abcdefghijklmnopqrstuvwxyz"


def ref_tid_to_int(tid: str) -> int | None:
    """13 characters of the sortable alphabet, the first one of "234567ab"."""
    if len(tid) != 13 or tid[0] not in "234567ab" or any(c not in _SORTABLE for c in tid):
        return None
    value = 0
    for c in tid:
        value = value * 32 + _SORTABLE.index(c)
    return value


_ODD_CHARS = "0189_ -+ABZ\t\n\u0663\u00e9\uff10." + _SORTABLE
tid_like = st.one_of(
    st.text(_SORTABLE, min_size=13, max_size=13),
    st.text(_ODD_CHARS, min_size=13, max_size=13),
    st.text(_ODD_CHARS, min_size=0, max_size=16),
    st.integers(0, 2**63 - 1).map(int_to_tid),
    st.text(max_size=14),
)


@given(tid_like)
@example("2222222222222")
@example("bzzzzzzzzzzzz")
@example("czzzzzzzzzzzz")  # 2**63: one too many
@example("3lbcdefghij2_")
@example(" 3lbcdefghij2")
@example("+3lbcdefghij2")
@example("3lbcdefghij2\u0663")
@example("3LBCDEFGHIJ22")
@example("3lbcdefghij20")
def test_tid_to_int_matches_reference(text: str) -> None:
    assert tid_to_int(text) == ref_tid_to_int(text)


@given(st.integers(0, 2**63 - 1))
def test_tid_round_trip(value: int) -> None:
    assert tid_to_int(int_to_tid(value)) == value


def test_every_single_bad_character_is_rejected() -> None:
    base = "3lbcdefghij22"
    for code in list(range(0x180)) + [0x663, 0xFF10, 0xD800]:
        for i in (0, 6, 12):
            text = base[:i] + chr(code) + base[i + 1:]
            assert tid_to_int(text) == ref_tid_to_int(text), repr(text)


# ---------------------------------------------------------------- links

_SCHEME_START = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def ref_walk(value: Any, path: str, found: dict[tuple[str, str], None], depth: int) -> None:
    """The plain recursive walk: one call per value."""
    if depth > MAX_DEPTH:
        return
    if isinstance(value, str):
        if ":" in value and value[0] in _SCHEME_START:
            target = link_form(value)
            if target is not None:
                found[(path, target)] = None
    elif isinstance(value, dict):
        for key, child in value.items():
            if type(child) is str:
                if ":" in child and child[0] in _SCHEME_START and key != "$type":
                    target = link_form(child)
                    if target is not None:
                        found[(f"{path}.{key}", target)] = None
            elif isinstance(child, (dict, list)):
                ref_walk(child, f"{path}.{key}", found, depth + 1)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                kind = item.get("$type")
                element = f"{path}[{kind}]" if isinstance(kind, str) else f"{path}[]"
            else:
                element = f"{path}[]"
            ref_walk(item, element, found, depth + 1)


def ref_extract_links(record: Any) -> list[tuple[str, str]]:
    found: dict[tuple[str, str], None] = {}
    ref_walk(record, "", found, 0)
    return list(found)


_LINKS = [
    "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.feed.post/3lbcdefghij22", "did:plc:abc", "did:web:x.y",
    "https://Example.COM/a/./b/../c?q#f", "mailto:x@y", "HTTPS://x/%7e", "at://x y", "did:PLC:x",
    "2024-11-20T10:00:00.000Z", "bafyreigdr7mzgl5r3pnfbmdkgbz6tqkxpf3xpzdm7ea6ryzwyrz2gyvnfa", "", "a:",
    "app.bsky.feed.post", "at://", "urn:isbn:123", "é:x",
]
strings = st.one_of(st.sampled_from(_LINKS), st.text(max_size=12))
keys = st.sampled_from(["$type", "subject", "uri", "did", "features", "embed", "", "a.b", "x"])
scalars = st.one_of(strings, st.integers(), st.booleans(), st.none(), st.floats(allow_nan=False))
type_tags = st.sampled_from(["app.bsky.richtext.facet#mention", "app.bsky.embed.images", 5, None])


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    tagged = st.builds(lambda tag, d: {"$type": tag, **d} if tag is not None else d, type_tags,
                       st.dictionaries(keys, children, max_size=4))
    return st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4), tagged)


json_values = st.recursive(scalars, _containers, max_leaves=30)


def _nest(depth: int, leaf: Any, via_list: bool) -> Any:
    value = leaf
    for i in range(depth):
        value = [value, "did:plc:d" + str(i)] if via_list and i % 2 else {"k": value, "d": "did:plc:e" + str(i)}
    return value


@given(st.dictionaries(keys, json_values, max_size=6))
@settings(max_examples=500)
def test_extract_links_matches_reference(record: dict[str, Any]) -> None:
    assert extract_links(record) == ref_extract_links(record)


@given(json_values)
def test_extract_links_of_any_value(value: Any) -> None:
    assert extract_links(value) == ref_extract_links(value)


def test_depth_limit_is_unchanged() -> None:
    for depth in range(MAX_DEPTH - 3, MAX_DEPTH + 4):
        for via_list in (False, True):
            for leaf in ("did:plc:leaf", ["did:plc:leaf"], {"x": "did:plc:leaf"}, [["did:plc:leaf"]]):
                record = {"top": _nest(depth, leaf, via_list)}
                assert extract_links(record) == ref_extract_links(record), (depth, via_list, leaf)
                assert extract_links([record]) == ref_extract_links([record])


def test_subclasses_walk_as_before() -> None:
    class S(str):
        pass

    class D(dict):  # type: ignore[type-arg]
        pass

    class L(list):  # type: ignore[type-arg]
        pass

    record = {"a": S("did:plc:a"), "b": [S("did:plc:b"), D({"$type": "t", "u": "did:plc:c"}), L(["did:plc:d"])],
              "c": D({"v": "did:plc:e"}), "d": L(["did:plc:f"])}
    assert extract_links(record) == ref_extract_links(record)
    assert extract_links(D(record)) == ref_extract_links(D(record))
