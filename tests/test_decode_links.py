"""decode_event on real and malformed events; extract_links on hand-written records."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import JETSTREAM
from smalldp.events import (
    AccountStatus,
    DeleteRecord,
    Identity,
    MalformedEvent,
    PutRecord,
    decode_event,
)
from smalldp.links import extract_links, is_link, link_form
from smalldp.store.reader import LinkRecord, Reader
from smalldp.store.writer import Writer

FIXTURE_FILES = ["corpus_expected_v1.jsonl", "subscribe_golden_v1.jsonl"]
DID_A = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"
DID_B = "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb"
POST_1 = f"at://{DID_B}/app.bsky.feed.post/3lbcdefghij22"
POST_2 = f"at://{DID_B}/app.bsky.feed.post/3lbcdefghik22"


def my_tid(tid: str) -> int:
    """Base32-sortable decode, written out: digit values 2..7 -> 0..5, a..z -> 6..31."""
    alphabet = "234567abcdefghijklmnopqrstuvwxyz"
    value = 0
    for ch in tid:
        value = value * 32 + alphabet.index(ch)
    return value


def test_my_tid_by_hand():
    # "2222222222222" is 0; "2222222222223" is 1; "222222222222z" is 31; "2222222222232" is 32.
    assert my_tid("2222222222222") == 0
    assert my_tid("2222222222223") == 1
    assert my_tid("222222222222z") == 31
    assert my_tid("2222222222232") == 32


# ---------------------------------------------------------------- real events

def _fixture_lines() -> list[tuple[str, int, bytes]]:
    if not JETSTREAM.is_dir():
        return []
    out = []
    for name in FIXTURE_FILES:
        for number, line in enumerate((JETSTREAM / name).read_bytes().splitlines(), 1):
            out.append((name, number, line))
    return out


FIXTURE_LINES = _fixture_lines()


@pytest.mark.skipif(not FIXTURE_LINES, reason=f"no Jetstream fixtures at {JETSTREAM}")
@pytest.mark.parametrize("name,number,line", FIXTURE_LINES,
                         ids=[f"{n.split('_')[0]}-{i}" for n, i, _ in FIXTURE_LINES])
def test_decode_real_event(name: str, number: int, line: bytes):
    event = json.loads(line)
    op = decode_event(line)
    assert op.did == event["did"]
    assert op.time_us == event["time_us"]
    if event["kind"] == "commit":
        commit = event["commit"]
        assert op.rev == my_tid(commit["rev"])
        assert op.collection == commit["collection"]
        assert op.rkey == commit["rkey"]
        if commit["operation"] == "delete":
            assert type(op) is DeleteRecord
        else:
            assert type(op) is PutRecord
            assert op.is_create == (commit["operation"] == "create")
            assert op.cid == commit["cid"]
            assert op.record == commit["record"]
            # the body is the record's JSON exactly as it arrived on the wire
            assert op.body in line
            assert json.loads(op.body) == commit["record"]
    elif event["kind"] == "identity":
        assert type(op) is Identity
        assert op.seq == event["identity"]["seq"]
        assert op.handle is None  # neither capture's identity event carries a handle
    else:
        assert type(op) is AccountStatus
        assert op.seq == event["account"]["seq"]
        assert op.active is True and op.status is None


@pytest.mark.skipif(not FIXTURE_LINES, reason=f"no Jetstream fixtures at {JETSTREAM}")
def test_decode_real_event_kinds_by_hand():
    # Tallied from the files (see corpus_manifest.json: 144 creates, 2 updates, 4 deletes,
    # 1 identity, 1 account; golden README table: 5 creates, 2 updates, 1 delete, 1 each).
    kinds: dict[str, int] = {}
    for _, _, line in FIXTURE_LINES:
        op = decode_event(line)
        key = type(op).__name__
        if isinstance(op, PutRecord):
            key += ".create" if op.is_create else ".update"
        kinds[key] = kinds.get(key, 0) + 1
    assert kinds == {"PutRecord.create": 149, "PutRecord.update": 4, "DeleteRecord": 5,
                     "Identity": 2, "AccountStatus": 2}


def test_decode_place_stream_golden_line():
    # golden line 7, inlined so it runs without the fixtures
    line = (b'{"did":"did:plc:qlhxnyjaacdu5jvapiqtbgqg","time_us":1779719010416808,"kind":"commit",'
            b'"commit":{"rev":"3mmoojqaufi2w","operation":"update","collection":"place.stream.broadcast.origin",'
            b'"rkey":"did:plc:qlhxnyjaacdu5jvapiqtbgqg::did:web:prod-sea0.stream.place",'
            b'"record":{"$type":"place.stream.broadcast.origin","broadcaster":"did:web:stream.place",'
            b'"server":"did:web:prod-sea0.stream.place","streamer":"did:plc:qlhxnyjaacdu5jvapiqtbgqg",'
            b'"updatedAt":"2026-05-25T14:23:29.807Z","websocketURL":"wss://prod-sea0.stream.place/xrpc/'
            b'place.stream.live.subscribeSegments?streamer=did%3Aplc%3Aqlhxnyjaacdu5jvapiqtbgqg"},'
            b'"cid":"bafyreibk2m3ujbeckwgyvgi3bjucfnqj35xjynqswmnywd5a3thnrnzv6m"}}')
    op = decode_event(line)
    assert type(op) is PutRecord and not op.is_create
    assert op.rkey == "did:plc:qlhxnyjaacdu5jvapiqtbgqg::did:web:prod-sea0.stream.place"
    assert extract_links(op.record) == [
        (".broadcaster", "did:web:stream.place"),
        (".server", "did:web:prod-sea0.stream.place"),
        (".streamer", "did:plc:qlhxnyjaacdu5jvapiqtbgqg"),
        (".websocketURL", "wss://prod-sea0.stream.place/xrpc/place.stream.live.subscribeSegments"
                          "?streamer=did%3Aplc%3Aqlhxnyjaacdu5jvapiqtbgqg"),
    ]


def test_decode_identity_with_handle_lowercases():
    op = decode_event(json.dumps({"did": DID_A, "time_us": 5, "kind": "identity",
                                  "identity": {"handle": "Alice.Example.COM", "seq": 9}}))
    assert op == Identity(DID_A, 5, 9, "alice.example.com", 5)  # no time: ordered by time_us


def test_decode_account_deleted():
    op = decode_event(json.dumps({"did": DID_A, "time_us": 5, "kind": "account",
                                  "account": {"active": False, "status": "deleted", "seq": 3}}))
    assert op == AccountStatus(DID_A, 5, 3, False, "deleted", 5)


def test_unknown_kind_is_ignored():
    assert decode_event(json.dumps({"did": DID_A, "time_us": 1, "kind": "sync", "sync": {}})) is None
    assert decode_event(json.dumps({"did": DID_A, "time_us": 1, "kind": "somethingnew"})) is None


# ---------------------------------------------------------------- malformed events

def _commit(**changes: Any) -> str:
    commit = {"rev": "3lbcdefghij22", "operation": "create", "collection": "app.bsky.feed.like",
              "rkey": "3lbcdefghij22", "cid": "bafyreix",
              "record": {"$type": "app.bsky.feed.like", "subject": {"uri": POST_1, "cid": "bafyreiy"}}}
    for key, value in changes.items():
        if value is _DROP:
            del commit[key]
        else:
            commit[key] = value
    return json.dumps({"did": DID_A, "time_us": 1, "kind": "commit", "commit": commit})


_DROP = object()

MALFORMED = {
    "not json": "this is not json",
    "truncated json": _commit()[:60],
    "empty": "",
    "json array": "[1, 2, 3]",
    "json string": '"did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"',
    "missing did": json.dumps({"time_us": 1, "kind": "identity", "identity": {}}),
    "bad did": json.dumps({"did": "plc:aaaa", "time_us": 1, "kind": "identity", "identity": {}}),
    "bad did method": json.dumps({"did": "did:PLC:aaaa", "time_us": 1, "kind": "identity", "identity": {}}),
    "did with space": json.dumps({"did": "did:plc:aa aa", "time_us": 1, "kind": "identity", "identity": {}}),
    "missing time_us": json.dumps({"did": DID_A, "kind": "identity", "identity": {}}),
    "negative time_us": json.dumps({"did": DID_A, "time_us": -1, "kind": "identity", "identity": {}}),
    "string time_us": json.dumps({"did": DID_A, "time_us": "1", "kind": "identity", "identity": {}}),
    "missing kind": json.dumps({"did": DID_A, "time_us": 1}),
    "commit without commit": json.dumps({"did": DID_A, "time_us": 1, "kind": "commit"}),
    "commit null": json.dumps({"did": DID_A, "time_us": 1, "kind": "commit", "commit": None}),
    "unknown operation": _commit(operation="upsert"),
    "create without record": _commit(record=_DROP),
    "update without record": _commit(operation="update", record=_DROP),
    "record null": _commit(record=None),
    "record is a list": _commit(record=[1, 2]),
    "record is a string": _commit(record="hello"),
    "bad rev": _commit(rev="not-a-tid"),
    "rev too short": _commit(rev="3lbcdefghij2"),
    "rev with bad first char": _commit(rev="zlbcdefghij22"),
    "missing rev": _commit(rev=_DROP),
    "bad rkey slash": _commit(rkey="a/b"),
    "bad rkey dot": _commit(rkey="."),
    "bad rkey dotdot": _commit(rkey=".."),
    "empty rkey": _commit(rkey=""),
    "bad collection": _commit(collection="nodots"),
    "bad collection chars": _commit(collection="app.bsky/feed.like"),
    "account without account": json.dumps({"did": DID_A, "time_us": 1, "kind": "account"}),
    "bad account status": json.dumps({"did": DID_A, "time_us": 1, "kind": "account",
                                      "account": {"active": False, "status": "exploded"}}),
    "account without active": json.dumps({"did": DID_A, "time_us": 1, "kind": "account", "account": {}}),
    "identity without identity": json.dumps({"did": DID_A, "time_us": 1, "kind": "identity"}),
    "bad handle": json.dumps({"did": DID_A, "time_us": 1, "kind": "identity",
                              "identity": {"handle": "not a handle"}}),
}


def test_the_valid_base_of_the_malformed_events_decodes():
    op = decode_event(_commit())
    assert type(op) is PutRecord and op.rkey == "3lbcdefghij22" and op.is_create
    assert decode_event(_commit(operation="delete", record=_DROP)) == DeleteRecord(
        DID_A, 1, my_tid("3lbcdefghij22"), "app.bsky.feed.like", "3lbcdefghij22")


@pytest.mark.parametrize("line", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_event_raises(line: str):
    with pytest.raises(MalformedEvent):
        decode_event(line)
    with pytest.raises(MalformedEvent):
        decode_event(line.encode())


# ---------------------------------------------------------------- links

def test_like_links_subject_uri_only():
    record = {"$type": "app.bsky.feed.like", "createdAt": "2026-01-01T00:00:00.000Z",
              "subject": {"cid": "bafyreiaxf7tgbfydx3465sckitq6v564thxe2wwydbi7cwxbxvgssje3em", "uri": POST_1}}
    assert extract_links(record) == [(".subject.uri", POST_1)]


def test_follow_links_subject_did():
    record = {"$type": "app.bsky.graph.follow", "createdAt": "2026-01-01T00:00:00.000Z", "subject": DID_B}
    assert extract_links(record) == [(".subject", DID_B)]


def test_reply_links_parent_and_root_even_when_equal():
    record = {"$type": "app.bsky.feed.post", "text": "hi",
              "reply": {"parent": {"cid": "bafyreip", "uri": POST_2},
                        "root": {"cid": "bafyreir", "uri": POST_1}}}
    assert extract_links(record) == [(".reply.parent.uri", POST_2), (".reply.root.uri", POST_1)]
    record["reply"]["parent"]["uri"] = POST_1
    assert extract_links(record) == [(".reply.parent.uri", POST_1), (".reply.root.uri", POST_1)]


def test_quote_embed_and_record_with_media():
    quote = {"$type": "app.bsky.feed.post", "text": "look",
             "embed": {"$type": "app.bsky.embed.record", "record": {"cid": "bafyreiq", "uri": POST_1}}}
    assert extract_links(quote) == [(".embed.record.uri", POST_1)]
    with_media = {"$type": "app.bsky.feed.post", "text": "look",
                  "embed": {"$type": "app.bsky.embed.recordWithMedia",
                            "media": {"$type": "app.bsky.embed.images",
                                      "images": [{"alt": "a cat", "image": {
                                          "$type": "blob", "ref": {"$link": "bafkreiimage"},
                                          "mimeType": "image/jpeg", "size": 10}}]},
                            "record": {"$type": "app.bsky.embed.record",
                                       "record": {"cid": "bafyreiq", "uri": POST_2}}}}
    assert extract_links(with_media) == [(".embed.record.record.uri", POST_2)]


def test_facet_mentions_and_links_use_the_type_in_the_path():
    record = {"$type": "app.bsky.feed.post", "text": "@b @c see https://example.com/x",
              "facets": [
                  {"index": {"byteStart": 0, "byteEnd": 2},
                   "features": [{"$type": "app.bsky.richtext.facet#mention", "did": DID_B}]},
                  {"index": {"byteStart": 3, "byteEnd": 5},
                   "features": [{"$type": "app.bsky.richtext.facet#mention", "did": DID_A}]},
                  {"index": {"byteStart": 10, "byteEnd": 31},
                   "features": [{"$type": "app.bsky.richtext.facet#link", "uri": "https://example.com/x"}]},
                  {"index": {"byteStart": 0, "byteEnd": 1},
                   "features": [{"$type": "app.bsky.richtext.facet#tag", "tag": "cats"}]},
              ]}
    mention = ".facets[].features[app.bsky.richtext.facet#mention].did"
    assert extract_links(record) == [
        (mention, DID_B), (mention, DID_A),
        (".facets[].features[app.bsky.richtext.facet#link].uri", "https://example.com/x")]


def test_arrays_of_plain_strings_and_untyped_objects():
    record = {"tags": ["cats", "https://example.com/a", DID_A, "dogs"],
              "items": [{"ref": POST_1}, {"$type": "com.example.item", "ref": POST_2}],
              "nested": [[DID_B]]}
    assert extract_links(record) == [
        (".tags[]", "https://example.com/a"), (".tags[]", DID_A),
        (".items[].ref", POST_1), (".items[com.example.item].ref", POST_2),
        (".nested[][]", DID_B)]


def test_same_target_twice_at_one_path_counts_once(tmp_path: Path):
    record = {"$type": "app.bsky.feed.post", "text": "@b and @b again",
              "facets": [
                  {"index": {"byteStart": 0, "byteEnd": 2},
                   "features": [{"$type": "app.bsky.richtext.facet#mention", "did": DID_B}]},
                  {"index": {"byteStart": 7, "byteEnd": 9},
                   "features": [{"$type": "app.bsky.richtext.facet#mention", "did": DID_B}]}],
              "tags": [DID_B, DID_B]}
    mention = ".facets[].features[app.bsky.richtext.facet#mention].did"
    assert extract_links(record) == [(mention, DID_B), (".tags[]", DID_B)]
    # and the store counts that record once per path
    line = json.dumps({"did": DID_A, "time_us": 1_700_000_000_000_000, "kind": "commit",
                       "commit": {"rev": "3lbcdefghij22", "operation": "create",
                                  "collection": "app.bsky.feed.post", "rkey": "3lbcdefghij22",
                                  "cid": "bafyreipost", "record": record}})
    db = tmp_path / "store.sqlite"
    writer = Writer(db)
    stats = writer.apply([decode_event(line)], cursor=1_700_000_000_000_000)
    writer.close()
    assert stats.links_added == 2
    reader = Reader(db)
    try:
        assert reader.count(DID_B, "app.bsky.feed.post", mention) == 1
        assert reader.backlinks(DID_B, "app.bsky.feed.post", mention).items == [
            LinkRecord(DID_A, "app.bsky.feed.post", "3lbcdefghij22")]
        assert reader.all_links(DID_B) == {"app.bsky.feed.post": {mention: (1, 1), ".tags[]": (1, 1)}}
        assert reader.stats()["links"] == 2
    finally:
        reader.close()


def test_values_that_are_not_strings_are_not_links():
    record = {"a": 1, "b": 2.5, "c": True, "d": None, "e": {"f": [1, None, False]},
              "$type": "at://did:plc:aaaaaaaaaaaaaaaaaaaaaaaa/app.bsky.feed.post/3lbcdefghij22"}
    assert extract_links(record) == []


NOT_LINKS = [
    "", "hello", "hello world", "plain text with did:plc:abc inside", "Note: not a link", "lol :)",
    "bafyreiaxf7tgbfydx3465sckitq6v564thxe2wwydbi7cwxbxvgssje3em",  # CID
    "bafkreieajxclqzwk2mczx7hxmoboqpuiveqlbm35gsda5xlaqfmlryu4ri",  # blob CID
    "app.bsky.feed.post",  # NSID
    "app.bsky.richtext.facet#mention",
    "2026-05-25T14:23:29.807Z", "12:30", "1a:b",
    "at:// spaced", "at://did:plc:abc/app.bsky.feed.post/x y", "at://did:plc:abc/app.bsky.feed.post/é",
    "did:plc:ab cd", "did:plc:abc\n",
    "https://exa mple.com", "://example.com", "example.com", "www.example.com/path",
    "https://例え.jp/", "https://example.com/café",  # not ASCII: an IRI, not a URI (as Constellation)
    "https://example.com/" + "a" * 2100,  # longer than MAX_LINK_LENGTH
    "http://a:b:c/", "http://a@b@c", "x:%zz", "x:%4", "https:\\bad-example.com", "http://[::1", "http://[1:2]/",
    "http://[::1]x", "http://h:80x/", "http://exa<mple>.com", 'http://"quoted"', "mailto:a b@example.com",
]


@pytest.mark.parametrize("value", NOT_LINKS)
def test_not_links(value: str):
    assert not is_link(value)
    assert extract_links({"v": value, "l": [value]}) == []


LINKS = [
    "at://did:plc:aaaaaaaaaaaaaaaaaaaaaaaa/app.bsky.feed.post/3lbcdefghij22",
    "at://did:plc:aaaaaaaaaaaaaaaaaaaaaaaa",
    "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "did:web:example.com", "did:web:example.com%3A8080",
    "http://example.com", "https://example.com/a/b?x=1&y=2#frag", "https://www.youtube.com/watch?v=V5lDo-jw8mA",
    "wss://prod-sea0.stream.place/xrpc/x?streamer=did%3Aplc%3Aq",
]


@pytest.mark.parametrize("value", LINKS)
def test_links(value: str):
    assert is_link(value)
    assert extract_links({"v": value}) == [(".v", value)]


# Any RFC 3986 absolute URI is a link, as in Constellation, stored normalized as fluent-uri
# normalizes (the stored forms worked out by hand from RFC 3986 section 6.2.2 and 5.2.4).
URIS = [
    ("mailto:someone@example.com", "mailto:someone@example.com"),
    ("urn:isbn:0451450523", "urn:isbn:0451450523"),
    ("oracle:6f1c2a84-7d6b-4f1e-9a1b-0c2d3e4f5a6b", "oracle:6f1c2a84-7d6b-4f1e-9a1b-0c2d3e4f5a6b"),
    ("lol:)", "lol:)"), ("a:", "a:"), ("at:/x", "at:/x"), ("https://", "https://"),
    ("at://", "at://"),  # no authority: not an at-uri, but a URI
    ("http:/example.com", "http:/example.com"),
    ("did:plc:", "did:plc:"), ("did:plc:abc:", "did:plc:abc:"),  # not DIDs, but URIs
    ("did:PLC:abc", "did:PLC:abc"), ("DID:plc:abc", "did:plc:abc"),  # the scheme in lower case
    ("HTTPS://example.com/../", "https://example.com/"),
    ("HTTP://www.Example.com/", "http://www.example.com/"),
    ("http://example.com/%7Efoo", "http://example.com/~foo"),
    ("http://example.com/%7efoo%2f%3a", "http://example.com/~foo%2F%3A"),
    ("http://Ex%41MPLE.com/", "http://example.com/"),  # a decoded host letter in lower case too
    ("http://a/b/c/./../../g", "http://a/g"), ("http://a/b/c/d;p?q/../g", "http://a/b/c/d;p?q/../g"),
    ("http://a/..", "http://a/"), ("http://a/b/%2E%2E/c", "http://a/c"),
    ("mid:content=5/../6", "mid:content=5/../6"),  # a rootless path keeps its dots
    ("foo:/a/..//bar", "foo:/.//bar"),  # "/." so the path cannot read as an authority
    ("http://example.com:/x", "http://example.com/x"), ("http://example.com:8080", "http://example.com:8080"),
    ("http://User@Example.com/", "http://User@example.com/"),
    ("http://[::FFFF:1.2.3.4]/", "http://[::ffff:1.2.3.4]/"),
    ("http://[2001:DB8:0:0:0:0:0:1]:80/", "http://[2001:db8::1]:80/"),
    ("http://[v7.ABC]/", "http://[v7.abc]/"), ("http://127.0.0.1/", "http://127.0.0.1/"),
    ("HTTPS://Example.COM/%7Efoo/./bar/../baz?Q=%7a#Frag", "https://example.com/~foo/baz?Q=z#Frag"),
]


@pytest.mark.parametrize("value, stored", URIS)
def test_any_absolute_uri_is_a_link_in_its_normal_form(value: str, stored: str):
    assert is_link(value)
    assert link_form(value) == stored
    assert link_form(stored) == stored
    assert extract_links({"v": value, "w": [stored]}) == [(".v", stored), (".w[]", stored)]


def test_one_link_per_path_whatever_the_spelling():
    record = {"refs": ["HTTPS://Example.com/a", "https://example.com/a", "https://example.com/./a"]}
    assert extract_links(record) == [(".refs[]", "https://example.com/a")]


_URI_PIECES = st.sampled_from(["http", "HTTPS", "x", "://", ":", "/", "//", "?", "#", "@", "[", "]", "::1", "%41",
                               "%7e", "%2F", "%2e", ".", "..", "./", "../", "Ex", "a", "0", ":80", "v1.x", "!", "~"])


@settings(max_examples=500)
@given(st.lists(_URI_PIECES, min_size=1, max_size=10).map("".join))
def test_stored_forms_are_links_and_stay_as_they_are(value: str):
    stored = link_form(value)
    if stored is not None:
        assert link_form(stored) == stored
        assert extract_links({"v": value}) == [(".v", stored)]


# ---------------------------------------------------------------- property

_KEY = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=6)
_TYPES = st.sampled_from(["app.bsky.richtext.facet#mention", "com.example.item", "x.y.z"])
_LEAF_STRINGS = st.one_of(
    st.sampled_from(LINKS + NOT_LINKS + [DID_A, DID_B, POST_1, POST_2]),
    st.text(max_size=12),
    st.builds(lambda s: "https://example.com/" + s, st.text(alphabet=string.ascii_letters, max_size=5)),
    st.builds(lambda s: "did:plc:" + s, st.text(alphabet="abcxyz234", max_size=5)),
)
_LEAVES = st.one_of(_LEAF_STRINGS, st.integers(), st.booleans(), st.none(), st.floats(allow_nan=False))


def _typed(child: st.SearchStrategy) -> st.SearchStrategy:
    return st.builds(lambda d, t: {**d, "$type": t}, st.dictionaries(_KEY, child, max_size=3), _TYPES)


_VALUES = st.recursive(
    _LEAVES,
    lambda child: st.one_of(st.lists(child, max_size=4), st.dictionaries(_KEY, child, max_size=4),
                            _typed(child)),
    max_leaves=25,
)
_RECORDS = st.dictionaries(_KEY, _VALUES, max_size=5)


def _strings(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return {s for v in value.values() for s in _strings(v)}
    if isinstance(value, list):
        return {s for v in value for s in _strings(v)}
    return set()


def _resolve(value: Any, path: str) -> list[Any]:
    """Values at a Constellation path (keys here are alphanumeric, so parsing is plain)."""
    if not path:
        return [value]
    if path.startswith("."):
        end = min([i for i in (path.find(".", 1), path.find("[", 1)) if i > 0], default=len(path))
        key = path[1:end]
        return _resolve(value[key], path[end:]) if isinstance(value, dict) and key in value else []
    assert path.startswith("["), path
    close = path.index("]")
    kind = path[1:close] or None
    out = []
    for item in value if isinstance(value, list) else []:
        item_kind = item.get("$type") if isinstance(item, dict) else None
        if item_kind == kind:
            out += _resolve(item, path[close + 1:])
    return out


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_RECORDS)
def test_extract_links_property(record: dict):
    links = extract_links(record)
    assert len(links) == len(set(links))
    strings = _strings(record)
    for path, target in links:
        assert isinstance(path, str) and isinstance(target, str)
        assert target in {link_form(s) for s in strings}
        assert is_link(target)
        assert target in {link_form(v) for v in _resolve(record, path) if isinstance(v, str)}, (path, target)
    # every link-shaped string reachable outside "$type" is found (the records are shallow)
    def reachable(value: Any) -> set[str]:
        if isinstance(value, str):
            return {value}
        if isinstance(value, dict):
            return {s for k, v in value.items() if k != "$type" for s in reachable(v)}
        if isinstance(value, list):
            return {s for v in value for s in reachable(v)}
        return set()
    assert {t for _, t in links} == {link_form(s) for s in reachable(record) if is_link(s)}


# ---------------------------------------------------------------- inputs that once crashed the import

@pytest.mark.parametrize("line", [
    # in the envelope (the did)
    b'{"did":"did:plc:aaaa\xff","time_us":1,"kind":"identity","identity":{}}',
    # inside the record (decoded separately from the raw record bytes)
    b'{"did":"did:plc:aaaa","time_us":1,"kind":"commit","commit":{"rev":"3lbcdefghij22",'
    b'"operation":"create","collection":"a.b.c","rkey":"x","record":{"t":"\xff"}}}',
], ids=["envelope", "record"])
def test_invalid_utf8_is_malformed(line: bytes):
    with pytest.raises(MalformedEvent):
        decode_event(line)


@pytest.mark.parametrize("event", [
    {"did": DID_A, "time_us": 2**63, "kind": "identity", "identity": {}},
    {"did": DID_A, "time_us": 10**30, "kind": "identity", "identity": {}},
    {"did": DID_A, "time_us": 1, "kind": "account", "account": {"active": True, "seq": 2**63}},
    {"did": DID_A, "time_us": 1, "kind": "identity", "identity": {"seq": 2**64 - 1}},
], ids=["time_us-2^63", "time_us-1e30", "account-seq", "identity-seq"])
def test_integers_beyond_64_bits_are_malformed(event: dict):
    with pytest.raises(MalformedEvent):
        decode_event(json.dumps(event))


def test_largest_64_bit_time_us_decodes():
    # the boundary of the bug above: 2**63 - 1 is a valid SQLite integer and is accepted
    op = decode_event(json.dumps({"did": DID_A, "time_us": 2**63 - 1, "kind": "identity", "identity": {}}))
    assert op == Identity(DID_A, 2**63 - 1, None, None, 2**63 - 1)
