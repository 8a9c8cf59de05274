"""Real captured Jetstream v1 data imported through `smalldp import`, checked by hand.

The two captures live outside the project (see conftest.JETSTREAM) and these tests
skip when they are absent.  Every literal below was read off the files by hand
(grep/jq of the JSON lines); the whole-store checks compare against an independent
walk of the records written here (json.loads + a plain recursive walk), never
against smalldp's own extract_links.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from conftest import JETSTREAM
from smalldp.store.reader import LinkRecord, Reader
from smalldp.store.schema import db_path

pytestmark = pytest.mark.skipif(not JETSTREAM.is_dir(), reason=f"no Jetstream fixtures at {JETSTREAM}")

CORPUS = JETSTREAM / "corpus_expected_v1.jsonl"
GOLDEN = JETSTREAM / "subscribe_golden_v1.jsonl"

LIKE, POST, REPOST = "app.bsky.feed.like", "app.bsky.feed.post", "app.bsky.feed.repost"
FOLLOW, BLOCK, PROFILE = "app.bsky.graph.follow", "app.bsky.graph.block", "app.bsky.actor.profile"
ORIGIN = "place.stream.broadcast.origin"


# ---------------------------------------------------------------- an independent link walk

# DID syntax per the W3C DID core grammar: did:<method>:<idchars, colons inside>.
_MY_DID = re.compile(r"did:[a-z0-9]+:(?:[A-Za-z0-9._-]|%[0-9A-Fa-f]{2}|:)*(?:[A-Za-z0-9._-]|%[0-9A-Fa-f]{2})")
_MY_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


def my_is_link(s: str) -> bool:
    if s.startswith("at://"):
        return len(s) > 5 and not any(c.isspace() for c in s)
    if s.startswith("did:"):
        return _MY_DID.fullmatch(s) is not None
    return _MY_URL.fullmatch(s) is not None


def my_links(record: Any) -> set[tuple[str, str]]:
    """Distinct (Constellation path, target) pairs of one record."""
    out: set[tuple[str, str]] = set()

    def walk(value: Any, path: str) -> None:
        if isinstance(value, str):
            if my_is_link(value):
                out.add((path, value))
        elif isinstance(value, dict):
            for key, child in value.items():
                if key != "$type":
                    walk(child, f"{path}.{key}")
        elif isinstance(value, list):
            for item in value:
                kind = item.get("$type") if isinstance(item, dict) else None
                walk(item, f"{path}[{kind}]" if isinstance(kind, str) else f"{path}[]")

    walk(record, "")
    return out


def expected_index(paths: list[Path]) -> tuple[dict[tuple[str, str, str], list[tuple[str, str]]], int]:
    """{(target, collection, path): [(did, rkey) of live records]} and the live link total."""
    live: dict[tuple[str, str, str], set[tuple[str, str]]] = {}
    touched: set[tuple[str, str, str]] = set()
    for path in paths:
        for line in path.read_bytes().splitlines():
            event = json.loads(line)
            if event["kind"] != "commit":
                continue
            commit = event["commit"]
            key = (event["did"], commit["collection"], commit["rkey"])
            # The captures touch every record at most once, so file order is enough here.
            assert key not in touched, key
            touched.add(key)
            if commit["operation"] in ("create", "update"):
                live[key] = my_links(commit["record"])
    index: dict[tuple[str, str, str], list[tuple[str, str]]] = defaultdict(list)
    for (did, coll, rkey), links in live.items():
        for path, target in links:
            index[(target, coll, path)].append((did, rkey))
    return dict(index), sum(len(links) for links in live.values())


# ---------------------------------------------------------------- the store

@pytest.fixture(scope="module")
def imported(tmp_path_factory, smalldp_import) -> tuple[Path, dict]:
    data = tmp_path_factory.mktemp("fixtures-store")
    summary = smalldp_import(data, [CORPUS, GOLDEN])
    return data, summary


@pytest.fixture
def reader(imported):
    r = Reader(db_path(imported[0]))
    yield r
    r.close()


def snapshot(reader: Reader, keys) -> dict:
    """Every answer the store gives about the given (target, collection, path) triples."""
    out: dict = {"stats_links": reader.stats()["links"]}
    for target, coll, path in sorted(keys):
        page = reader.backlinks(target, coll, path, limit=1000)
        dids = reader.distinct_dids(target, coll, path, limit=1000)
        out[(target, coll, path)] = (
            reader.count(target, coll, path), reader.distinct_count(target, coll, path),
            page.total, [(i.did, i.collection, i.rkey) for i in page.items], page.cursor,
            dids.total, sorted(dids.items))
        out[target] = reader.all_links(target)
    return out


def test_summary_counts_every_line(imported):
    _, summary = imported
    # wc -l: 152 corpus lines + 10 golden lines; each is a commit, identity or account
    # event, all well formed.
    assert summary["events"] == 162
    assert summary["skipped"] == 0
    assert summary["ignored"] == 0


# newest time_us of each capture (sort -n of the time_us fields): corpus line 149, golden line 5
CORPUS_NEWEST_US = 1783175888403568
GOLDEN_NEWEST_US = 1779719010689411


def test_cursor_is_the_newest_event_in_file_order(tmp_path, smalldp_import):
    data = tmp_path / "store"
    smalldp_import(data, [GOLDEN])
    reader = Reader(db_path(data))
    try:
        assert reader.stats()["cursor"] == GOLDEN_NEWEST_US
        smalldp_import(data, [CORPUS])
        assert reader.stats()["cursor"] == CORPUS_NEWEST_US
    finally:
        reader.close()


def test_cursor_never_moves_backwards(tmp_path, smalldp_import):
    data = tmp_path / "store"
    smalldp_import(data, [CORPUS, GOLDEN])
    reader = Reader(db_path(data))
    try:
        assert reader.stats()["cursor"] == CORPUS_NEWEST_US
    finally:
        reader.close()


def test_golden_follow_like_repost_block(reader):
    # golden line 4: did:plc:mxwlsvdgs6tn75lq6jrr2vp7 follows did:plc:anc6s2kher6ltrhhglxrzxsa, rkey 3mmoojocxvr2s
    assert reader.count("did:plc:anc6s2kher6ltrhhglxrzxsa", FOLLOW, ".subject") == 1
    assert reader.distinct_count("did:plc:anc6s2kher6ltrhhglxrzxsa", FOLLOW, ".subject") == 1
    page = reader.backlinks("did:plc:anc6s2kher6ltrhhglxrzxsa", FOLLOW, ".subject")
    assert page.items == [LinkRecord("did:plc:mxwlsvdgs6tn75lq6jrr2vp7", FOLLOW, "3mmoojocxvr2s")]
    assert page.total == 1 and page.cursor is None
    # ...and nothing else links to that DID (grep finds it only on line 4 of the golden file)
    assert reader.all_links("did:plc:anc6s2kher6ltrhhglxrzxsa") == {FOLLOW: {".subject": (1, 1)}}

    # golden line 1: a like of at://did:plc:vfnmgxg2yscfliemmcxzyfyh/app.bsky.feed.post/3mmoodizfwc2j
    liked = "at://did:plc:vfnmgxg2yscfliemmcxzyfyh/app.bsky.feed.post/3mmoodizfwc2j"
    assert reader.count(liked, LIKE, ".subject.uri") == 1
    assert reader.backlinks(liked, LIKE, ".subject.uri").items == [
        LinkRecord("did:plc:mcc5yghbk7tixqryac2yxku7", LIKE, "3mmoojp7etg2g")]
    # the subject's cid is not a link, and the like is not filed under another path
    assert reader.all_links(liked) == {LIKE: {".subject.uri": (1, 1)}}
    assert reader.count(liked, LIKE, ".subject") == 0
    assert reader.count("bafyreiaxf7tgbfydx3465sckitq6v564thxe2wwydbi7cwxbxvgssje3em", LIKE, ".subject.cid") == 0

    # golden line 3: a repost
    reposted = "at://did:plc:hjloomm2tkve3pmfgbxegl3v/app.bsky.feed.post/3mmood3a6hc25"
    assert reader.backlinks(reposted, REPOST, ".subject.uri").items == [
        LinkRecord("did:plc:eizxoqcsvvvarxeb3pjkblrp", REPOST, "3mmoojpbade2i")]

    # golden line 10: a block
    assert reader.count("did:plc:pgsrzsvisagr7wfqasmu3cgf", BLOCK, ".subject") == 1
    assert reader.backlinks("did:plc:pgsrzsvisagr7wfqasmu3cgf", BLOCK, ".subject").items == [
        LinkRecord("did:plc:2lv5zdhr6aqncw46v7zgxbio", BLOCK, "3mmoojpduny2w")]
    # a block is not a follow
    assert reader.count("did:plc:pgsrzsvisagr7wfqasmu3cgf", FOLLOW, ".subject") == 0


def test_golden_reply_links_parent_and_root(reader):
    # golden line 2: parent and root are the same post
    parent = "at://did:plc:j76trmiofvaxxpvx2vnb2vwf/app.bsky.feed.post/3mmojbrjwbs26"
    reply = LinkRecord("did:plc:q235v55g5unth4zjjdpacfdr", POST, "3mmoojp4cd223")
    assert reader.backlinks(parent, POST, ".reply.parent.uri").items == [reply]
    assert reader.backlinks(parent, POST, ".reply.root.uri").items == [reply]
    assert reader.all_links(parent) == {POST: {".reply.parent.uri": (1, 1), ".reply.root.uri": (1, 1)}}


def test_golden_profile_pinned_post_with_non_tid_rkey(reader):
    # golden line 5: profile update, rkey "self", pinnedPost; the avatar/banner $link CIDs are not links
    pinned = "at://did:plc:o6t5vwyr7ae73foww7bgye4r/app.bsky.feed.post/3meuab5it2s2g"
    assert reader.count(pinned, PROFILE, ".pinnedPost.uri") == 1
    assert reader.backlinks(pinned, PROFILE, ".pinnedPost.uri").items == [
        LinkRecord("did:plc:o6t5vwyr7ae73foww7bgye4r", PROFILE, "self")]
    assert reader.all_links(pinned) == {PROFILE: {".pinnedPost.uri": (1, 1)}}
    profile = reader.record("at://did:plc:o6t5vwyr7ae73foww7bgye4r/app.bsky.actor.profile/self")
    assert profile is not None
    assert profile["cid"] == "bafyreib257dpti3w5iitklrsx66dg3cmg3urfbogfksigjd5ie4r6v5cj4"
    assert profile["value"]["pinnedPost"]["uri"] == pinned
    assert profile["value"]["displayName"] == "Multiversal Lokis Unit\U0001f51e"


def test_golden_place_stream_dids_and_wss_url(reader):
    # golden line 7: rkey "did:plc:qlhxnyjaacdu5jvapiqtbgqg::did:web:prod-sea0.stream.place"
    streamer = "did:plc:qlhxnyjaacdu5jvapiqtbgqg"
    rkey = "did:plc:qlhxnyjaacdu5jvapiqtbgqg::did:web:prod-sea0.stream.place"
    record = LinkRecord(streamer, ORIGIN, rkey)
    wss = ("wss://prod-sea0.stream.place/xrpc/place.stream.live.subscribeSegments"
           "?streamer=did%3Aplc%3Aqlhxnyjaacdu5jvapiqtbgqg")
    for target, path in [("did:web:stream.place", ".broadcaster"),
                         ("did:web:prod-sea0.stream.place", ".server"),
                         (streamer, ".streamer"),
                         (wss, ".websocketURL")]:
        assert reader.count(target, ORIGIN, path) == 1, (target, path)
        assert reader.backlinks(target, ORIGIN, path).items == [record], (target, path)
        assert reader.all_links(target) == {ORIGIN: {path: (1, 1)}}, target
    # "updatedAt" is a date, not a link
    assert reader.all_links("2026-05-25T14:23:29.807Z") == {}


def test_golden_post_body_and_delete(reader):
    # golden line 2: the post body is stored with its cid
    got = reader.record("at://did:plc:q235v55g5unth4zjjdpacfdr/app.bsky.feed.post/3mmoojp4cd223")
    assert got is not None
    assert got["cid"] == "bafyreicl7rzkxdrm4zz2ehbx52kuk3mvfow6p3gzfys72r5grvskxoswy4"
    line = GOLDEN.read_text().splitlines()[1]
    assert got["value"] == json.loads(line)["commit"]["record"]
    assert got["value"]["text"] == "Try RSV for a good time !!"
    assert got["uri"] == "at://did:plc:q235v55g5unth4zjjdpacfdr/app.bsky.feed.post/3mmoojp4cd223"
    # indexedAt is the event's time_us 1779719009157119 -> 2026-05-25T14:23:29.157Z
    assert got["indexedAt"] == "2026-05-25T14:23:29.157Z"
    # a like's body is kept too (the default body collections are what the official AppView
    # reads, likes included: compact form), so golden line 1 comes back whole, with its cid
    like = json.loads(GOLDEN.read_text().splitlines()[0])
    like_uri = "at://did:plc:mcc5yghbk7tixqryac2yxku7/app.bsky.feed.like/3mmoojp7etg2g"
    got_like = reader.record(like_uri)
    assert got_like is not None and got_like["bodyKept"] is True
    assert got_like["uri"] == like_uri and got_like["rev"] == like["commit"]["rev"]
    assert got_like["cid"] == like["commit"]["cid"]
    assert got_like["value"] == like["commit"]["record"]
    assert got_like["links"] == [{"path": ".subject.uri", "target": like["commit"]["record"]["subject"]["uri"]}]
    # golden line 6 deletes a record never seen: nothing there
    assert reader.record("at://did:plc:3xnadku4kemqnycbweqnvgzx/org.hypercerts.claim.activity/3mmontn3gnc2e") is None


def test_golden_identity_and_account(reader):
    # golden lines 8-9: an identity event without handle, then account active=true
    assert reader.actor_state("did:plc:g4ut2w5755qxi3fe7mfs72p4") == {
        "did": "did:plc:g4ut2w5755qxi3fe7mfs72p4", "active": True, "status": None, "handle": None}
    assert reader.stats()["inactive_accounts"] == 0


def test_corpus_self_thread(reader):
    # corpus lines 54-56: did:plc:u4lmvw4wwzaql3z5kcf3r7h4 posts 3mptbyospqk2i, then
    # 3mptbyou7ls2i (parent=root=ospqk) and 3mptbyoumc22i (parent=ou7l, root=ospqk).
    author = "did:plc:u4lmvw4wwzaql3z5kcf3r7h4"
    root = f"at://{author}/app.bsky.feed.post/3mptbyospqk2i"
    middle = f"at://{author}/app.bsky.feed.post/3mptbyou7ls2i"
    assert reader.count(root, POST, ".reply.root.uri") == 2
    assert reader.distinct_count(root, POST, ".reply.root.uri") == 1
    assert reader.count(root, POST, ".reply.parent.uri") == 1
    assert reader.count(middle, POST, ".reply.parent.uri") == 1
    assert reader.count(middle, POST, ".reply.root.uri") == 0
    # newest first: TID 3mptbyoumc22i > 3mptbyou7ls2i ('m' sorts after '7')
    newest_first = [LinkRecord(author, POST, "3mptbyoumc22i"), LinkRecord(author, POST, "3mptbyou7ls2i")]
    assert reader.backlinks(root, POST, ".reply.root.uri").items == newest_first
    assert reader.backlinks(root, POST, ".reply.root.uri", reverse=True).items == newest_first[::-1]
    first = reader.backlinks(root, POST, ".reply.root.uri", limit=1)
    assert first.items == newest_first[:1] and first.total == 2 and first.cursor
    second = reader.backlinks(root, POST, ".reply.root.uri", limit=1, cursor=first.cursor)
    assert second.items == newest_first[1:] and second.cursor is None
    assert reader.distinct_dids(root, POST, ".reply.root.uri").items == [author]
    assert reader.all_links(root) == {POST: {".reply.parent.uri": (1, 1), ".reply.root.uri": (2, 1)}}
    # the two replies to the root, grouped by their parent: ospqk (line 55), ou7l (line 56)
    groups, cursor = reader.many_to_many(root, POST, ".reply.root.uri", ".reply.parent.uri")
    assert groups == [(root, 1, 1), (middle, 1, 1)]
    assert cursor is None


def test_corpus_embeds_facets_and_via(reader):
    # corpus line 2: the YouTube URL is both the external embed and a link facet
    yt = "https://www.youtube.com/watch?v=V5lDo-jw8mA"
    assert reader.all_links(yt) == {POST: {
        ".embed.external.uri": (1, 1),
        ".facets[].features[app.bsky.richtext.facet#link].uri": (1, 1)}}
    assert reader.backlinks(yt, POST, ".embed.external.uri").items == [
        LinkRecord("did:plc:dclwtltrt2ggsryagfzk7dp4", POST, "3mptbyoeyc22k")]
    # corpus line 101: app.bsky.actor.status with an external embed (a non-post collection)
    assert reader.all_links("https://www.twitch.tv/Zarynos_VT") == {
        "app.bsky.actor.status": {".embed.external.uri": (1, 1)}}
    # corpus line 18: a repost via another repost
    via = "at://did:plc:mc4ihv54ep37qtc6xtq5ab2f/app.bsky.feed.repost/3mpta65gqot2j"
    assert reader.backlinks(via, REPOST, ".via.uri").items == [
        LinkRecord("did:plc:5er4dj3kkwyj4cy5gdnzn56w", REPOST, "3mptbypowzs2e")]
    # corpus line 131: a gif URL with a query string
    gif = ("https://static.klipy.com/ii/f87f46a2c5aeaeed4c68910815f73eaf/7d/09/g1bpFVOm.gif"
           "?hh=498&ww=498&mp4=IrGBygbn&webm=1Tnl61JE")
    assert reader.count(gif, POST, ".embed.external.uri") == 1
    # corpus line 46: hashtag facets hold no links
    assert reader.all_links("HowToTellAiToShutUp") == {}


def test_corpus_follows_and_block(reader):
    # the six follow creates of the corpus (lines 23, 24, 45, 90, 98, 121)
    follows = {
        "did:plc:mlbpil2fwz43vfn6uuysxtqa": ("did:plc:f2furrjn2jdhjcn2td54ivxx", "3mptbypmibb2v"),
        "did:plc:233j7q3talilsawdau4uwnpf": ("did:plc:eu6vwrajoa7r5smvsz6z3leh", "3mptbyppqlg25"),
        "did:plc:d3jcihv6guhsifx6jvi5rexc": ("did:plc:q5fp4m5ethigrnyede3ap4nr", "3mptbypqtrq2j"),
        "did:plc:hqggstlmmn26how44vplt56a": ("did:plc:epyaa5emkromf277v4g3u7sm", "3mptbypsumb2j"),
        "did:plc:qkiod3t6z7a5dgevdmb3bvrf": ("did:plc:ugxwk4vf24erq2foyq7zq4m6", "3mptbypunq62r"),
        "did:plc:22wzqwkxddb54hyub4mlkh6a": ("did:plc:5ulfybw6lxycufgi2i6tyzm6", "3mptbyptkf72k"),
    }
    for subject, (did, rkey) in follows.items():
        assert reader.count(subject, FOLLOW, ".subject") == 1, subject
        assert reader.backlinks(subject, FOLLOW, ".subject").items == [LinkRecord(did, FOLLOW, rkey)]
    # corpus line 53
    assert reader.backlinks("did:plc:wmv3rxaywejtjg4kmrq7bhsy", BLOCK, ".subject").items == [
        LinkRecord("did:plc:zrrwgoryvpxlntwduw247p2w", BLOCK, "3mptbypkpqx2g")]


def test_corpus_deletes_of_unknown_records_are_noops(smalldp_import, tmp_path):
    data = tmp_path / "store"
    smalldp_import(data, [CORPUS, GOLDEN])
    reader = Reader(db_path(data))
    try:
        _check_unknown_deletes(reader, data, smalldp_import, tmp_path)
    finally:
        reader.close()


def _check_unknown_deletes(reader, data, smalldp_import, tmp_path):
    # corpus line 145 deletes a post that was never created: no body
    assert reader.record("at://did:plc:4smmjsqf6l5jkzczvw6vsrqc/app.bsky.feed.post/3mpt73z3ejc2p") is None
    # corpus line 12 deletes follow 3m3q3ut7jsm2m of did:plc:ux2eeflheratfrvp3xfbp4zi (rev
    # 3mptbyp63ih2m) whose create is absent.  Links total = the creates' links only:
    _, total = expected_index([CORPUS, GOLDEN])
    assert reader.stats()["links"] == total
    # The delete left a tombstone: the original create arriving late (older rev) stays
    # deleted, while a re-create with a newer rev applies.
    late = tmp_path / "late.jsonl"
    late.write_text(json.dumps({
        "did": "did:plc:ux2eeflheratfrvp3xfbp4zi", "time_us": 1783175888200000, "kind": "commit",
        "commit": {"rev": "3m3q3ut7jsm2m", "operation": "create", "collection": FOLLOW,
                   "rkey": "3m3q3ut7jsm2m", "cid": "bafyreilate",
                   "record": {"$type": FOLLOW, "subject": "did:plc:latefollowedaaaaaaaaaaaa",
                              "createdAt": "2025-01-01T00:00:00.000Z"}}}) + "\n")
    summary = smalldp_import(data, [late])
    assert summary["events"] == 1 and summary["links_added"] == 0
    assert reader.count("did:plc:latefollowedaaaaaaaaaaaa", FOLLOW, ".subject") == 0
    assert reader.stats()["links"] == total
    again = tmp_path / "recreate.jsonl"
    again.write_text(late.read_text().replace('"rev": "3m3q3ut7jsm2m"', '"rev": "3mptbzzzzzzz2"'))
    summary = smalldp_import(data, [again])
    assert summary["links_added"] == 1
    assert reader.backlinks("did:plc:latefollowedaaaaaaaaaaaa", FOLLOW, ".subject").items == [
        LinkRecord("did:plc:ux2eeflheratfrvp3xfbp4zi", FOLLOW, "3m3q3ut7jsm2m")]


def test_every_link_matches_an_independent_walk(tmp_path, smalldp_import):
    data = tmp_path / "store"
    summary = smalldp_import(data, [CORPUS, GOLDEN])
    index, total = expected_index([CORPUS, GOLDEN])
    # Hand check of the walk on the golden file: like 1 + reply 2 + repost 1 + follow 1
    # + profile 1 + place.stream 4 + block 1 = 11 links.
    assert expected_index([GOLDEN])[1] == 11
    assert summary["links_added"] == total
    reader = Reader(db_path(data))
    try:
        assert reader.stats()["links"] == total
        by_target: dict[str, dict[str, dict[str, tuple[int, int]]]] = defaultdict(dict)
        for (target, coll, path), sources in index.items():
            assert reader.count(target, coll, path) == len(sources), (target, coll, path)
            assert reader.distinct_count(target, coll, path) == len({d for d, _ in sources})
            got = reader.backlinks(target, coll, path, limit=1000).items
            assert sorted((i.did, i.rkey) for i in got) == sorted(sources)
            assert all(i.collection == coll for i in got)
            by_target[target].setdefault(coll, {})[path] = (len(sources), len({d for d, _ in sources}))
        for target, expected in by_target.items():
            assert reader.all_links(target) == expected, target
        # each post record is returned with the cid and body of its event
        posts = 0
        for path in (CORPUS, GOLDEN):
            for line in path.read_bytes().splitlines():
                event = json.loads(line)
                commit = event.get("commit") or {}
                if commit.get("collection") == POST and commit["operation"] == "create":
                    uri = f"at://{event['did']}/{POST}/{commit['rkey']}"
                    got = reader.record(uri)
                    assert got is not None, uri
                    assert got["cid"] == commit["cid"]
                    assert got["value"] == commit["record"]
                    posts += 1
        # grep -c '"collection":"app.bsky.feed.post"': 18 corpus lines, one of them the delete
        # of line 145, so 17 creates; plus 1 in the golden file
        assert posts == 18
    finally:
        reader.close()


def test_reimport_changes_no_answer(tmp_path, smalldp_import):
    data = tmp_path / "store"
    index, total = expected_index([CORPUS, GOLDEN])
    first = smalldp_import(data, [CORPUS, GOLDEN])
    reader = Reader(db_path(data))
    try:
        before = snapshot(reader, index)
        assert before["stats_links"] == total
        # without --restart: both files are already fully imported, nothing is read
        resumed = smalldp_import(data, [CORPUS, GOLDEN])
        assert resumed["events"] == 0 and resumed["links_added"] == 0
        assert snapshot(reader, index) == before
        # with --restart: every event is read again and is a replay
        again = smalldp_import(data, [CORPUS, GOLDEN], "--restart")
        assert again["events"] == first["events"] == 162
        assert again["links_added"] == 0 and again["links_removed"] == 0
        assert snapshot(reader, index) == before
        # in small batches, once more
        smalldp_import(data, [GOLDEN, CORPUS], "--restart", "--batch-events", "3")
        assert snapshot(reader, index) == before
    finally:
        reader.close()
    # and a clean import in batches of one event gives the same answers
    other = tmp_path / "other"
    smalldp_import(other, [CORPUS, GOLDEN], "--batch-events", "1")
    reader = Reader(db_path(other))
    try:
        assert snapshot(reader, index) == before
    finally:
        reader.close()
