"""bsky.Service's notification RPCs (smalldp.appview.rpcs.notifications over
store/dataplane/notifications.py), called as the gRPC server calls them.

Expected answers come from the brute-force model (tests/appview_model.py,
``get_notifications``: the reference's rules restated over all records, with smalldp's
documented limits as parameters) fed the same Jetstream v1 events as the real Writer.
Random histories (test_dataplane.History, extended with mentions, likes and reposts via
reposts, threads whose roots are consistent, starter-pack joins, likes of feed generators
and starter packs) over several seeds; every cursor walked at several page sizes, with the
work bound and the post window lowered so that both cut pages short.  By hand: each reason,
the precedence of mention over quote over reply, self-interactions, deep replies, inactive
authors, dead subjects, priority, the AppView's ISO first-page cursor, and the AppView's
own ``delayCursor`` (run under node) leaving smalldp's cursors alone.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from smalldp.appview.proto import bsky_pb2
from smalldp.appview.rpcs import handlers
from smalldp.appview.rpcs.base import AppViewContext, RpcError
from smalldp.store.dataplane import DataPlaneReader
from smalldp.store.dataplane import notifications as notif
from smalldp.store.writer import Writer
from smalldp.tid import int_to_tid, tid_from_time, tid_to_int

import appview_model as am
from appview_model import AppViewModel, split_uri
from bsky_node import NODE_DIR, node_or_fail
from helpers_server import BASE_US, Events, apply, did, iso
from test_dataplane import History, Universe, tidk

pytestmark = pytest.mark.timeout(300)

SYNC, ASYNC = handlers()


def call(dp: DataPlaneReader, **fields: Any) -> bsky_pb2.GetNotificationsResponse:
    """GetNotifications through its registered handler."""
    response = SYNC["GetNotifications"](dp, bsky_pb2.GetNotificationsRequest(**fields))
    assert isinstance(response, bsky_pb2.GetNotificationsResponse)
    return response


def as_dict(n: bsky_pb2.Notification) -> dict[str, Any]:
    """A Notification as the model writes it (time in microseconds, whole milliseconds)."""
    return {"uri": n.uri, "reason": n.reason, "reasonSubject": n.reason_subject,
            "timeUs": n.timestamp.seconds * 1_000_000 + n.timestamp.nanos // 1000, "priority": n.priority}


def walk(dp: DataPlaneReader, actor: str, limit: int, priority: bool = False, cursor: str = "") -> list[dict[str, Any]]:
    """Every page concatenated; each page within its limit, every notification for actor."""
    out: list[dict[str, Any]] = []
    for _ in range(20_000):
        response = call(dp, actor_did=actor, limit=limit, cursor=cursor, priority=priority)
        assert len(response.notifications) <= (limit or 50)
        assert all(n.recipient_did == actor for n in response.notifications)
        out += [as_dict(n) for n in response.notifications]
        if not response.cursor:
            return out
        assert response.cursor != cursor, "a cursor that does not move"
        cursor = response.cursor
    raise AssertionError("no last page")


def expected(model: AppViewModel, actor: str, posts: int | None = None,
             reposts: int | None = None) -> list[dict[str, Any]]:
    """The model's notifications with smalldp's window (store/dataplane/notifications.py):
    the account's posts (reposts) from its ``posts``-th newest live one (its oldest live one
    when it has fewer; none without a live one), the rest ignored."""
    def floor(collection: str, n: int) -> int:
        live = sorted((tid_to_int(rid[2]) for rid, _ in model.live(collection, actor)), reverse=True)
        return live[min(n, len(live)) - 1] if live else 1 << 64  # type: ignore[return-value]
    found = model.get_notifications(
        actor, post_floor=floor(am.POST, notif.NOTIFICATION_POSTS if posts is None else posts),
        repost_floor=floor(am.REPOST, notif.NOTIFICATION_REPOSTS if reposts is None else reposts))
    # timestamps go out in whole milliseconds (rpcs/args.timestamp_us)
    return [{**n, "timeUs": n["timeUs"] // 1000 * 1000} for n in found]


def parent_of(model: AppViewModel, uri: str) -> Any:
    """The reply parent uri of a live post (None when it is no live reply)."""
    rec = model.get_record(uri)
    return None if rec is None else am._get(rec.value, "reply", "parent", "uri")


# ---------------------------------------------------------------- random histories


class NotifyHistory(History):
    """test_dataplane.History with what notifications need: mentions, ``via``, threads
    whose root is the parent's root, joins through starter packs, likes of feed generators
    and starter packs.  Its own random stream for the additions."""

    def __init__(self, seed: int, n_dids: int, n_events: int) -> None:
        super().__init__(seed, n_dids, n_events)
        self.more = random.Random(seed + 77)
        self.roots: dict[str, str] = {}  # post uri -> its thread root, as last written
        self.thread: set[str] = set()  # thread posts written so far
        self.next_k = self.u.n_posts  # thread posts' rkeys follow the shared pool's

    def _event(self) -> dict[str, Any]:
        """The base's events, and (a third of the time) a thread post: a create at a fresh
        rkey (after the shared pools), never rewritten, replying to an earlier thread post
        or a pool post with the parent's root, so chains stay whole and threads get deep."""
        rng = self.more
        roll = rng.random()
        if 0.3 <= roll < 0.36:  # a profile (most join through a starter pack)
            self.clock_us += rng.randrange(1000, 5000)
            author = rng.choice(self.u.dids)
            return {"did": author, "kind": "commit", "commit": {
                "rev": int_to_tid(tid_from_time(self.clock_us, 0)), "operation": "create",
                "collection": am.PROFILE, "rkey": "self", "record": self._record(author, am.PROFILE, 0),
                "cid": f"bafyrei{rng.randrange(10 ** 9)}"}}
        if 0.36 <= roll < 0.5:  # a like or repost at a fresh rkey (the base pools hold only a few)
            self.clock_us += rng.randrange(1000, 5000)
            author = rng.choice(self.u.dids)
            collection, clock = rng.choice([(am.LIKE, 2), (am.LIKE, 2), (am.REPOST, 3)])
            k = self.next_k
            self.next_k += 1
            return {"did": author, "kind": "commit", "commit": {
                "rev": int_to_tid(tid_from_time(self.clock_us, 0)), "operation": "create",
                "collection": collection, "rkey": tidk(k, clock), "record": self._record(author, collection, k),
                "cid": f"bafyrei{rng.randrange(10 ** 9)}"}}
        if roll >= 0.3:
            return super()._event()
        self.clock_us += rng.randrange(1000, 5000)
        author, k = rng.choice(self.u.dids), self.next_k
        self.next_k += 1
        record = self._record(author, am.POST, k)
        record.pop("reply", None)
        if rng.random() < 0.85:
            threads = sorted(self.thread)
            parent = rng.choice(threads) if threads and rng.random() < 0.75 else rng.choice(self.u.post_uris)
            root = self.roots.get(parent, parent)
            record["reply"] = {"root": {"uri": root, "cid": "bafyroot"}, "parent": {"uri": parent, "cid": "bafyp"}}
        uri = f"at://{author}/{am.POST}/{tidk(k, 1)}"
        self.thread.add(uri)
        self.roots[uri] = record["reply"]["root"]["uri"] if "reply" in record else uri
        return {"did": author, "kind": "commit", "commit": {
            "rev": int_to_tid(tid_from_time(self.clock_us, 0)), "operation": "create", "collection": am.POST,
            "rkey": tidk(k, 1), "record": record, "cid": f"bafyrei{rng.randrange(10 ** 9)}"}}

    def _record(self, author: str, collection: str, k: int) -> dict[str, Any]:
        rec = super()._record(author, collection, k)
        rng, u = self.more, self.u
        if collection == am.POST:
            uri = f"at://{author}/{am.POST}/{tidk(k, 1)}"
            if "reply" in rec:
                parent = rec["reply"]["parent"]["uri"]
                if rng.random() < 0.8:  # a consistent thread: the parent's root (or the parent)
                    rec["reply"]["root"]["uri"] = self.roots.get(parent, parent)
                self.roots[uri] = rec["reply"]["root"]["uri"]
            else:
                self.roots.pop(uri, None)
            if rng.random() < 0.3:
                facets = []
                for _ in range(rng.randrange(1, 3)):
                    features: list[dict[str, Any]] = [
                        {"$type": am.MENTION, "did": rng.choice(u.subjects)}]
                    if rng.random() < 0.3:
                        features.append({"$type": "app.bsky.richtext.facet#link", "uri": "https://example.com/"})
                    facets.append({"index": {"byteStart": 0, "byteEnd": 1}, "features": features})
                rec["facets"] = facets
        elif collection in (am.LIKE, am.REPOST):
            roll = rng.random()
            if roll < 0.15:
                pool = [f"at://{d}/{am.GENERATOR}/{tidk(k, 9)}" for d in u.dids for k in range(2)] + \
                       [f"at://{d}/{am.STARTERPACK}/{tidk(k, 10)}" for d in u.dids for k in range(2)]
                rec["subject"] = {"uri": rng.choice(pool), "cid": "bafysubject"}
            elif roll < 0.55 and self.thread:  # a thread post: live, never rewritten
                rec["subject"] = {"uri": rng.choice(sorted(self.thread)), "cid": "bafysubject"}
            if rng.random() < 0.4:
                # via a repost, often one by the subject's author (then both notify that account)
                subject_author = rec["subject"]["uri"][5:].split("/")[0]
                by = subject_author if rng.random() < 0.4 and subject_author in u.dids else rng.choice(u.dids)
                rec["via"] = {"uri": f"at://{by}/{am.REPOST}/{tidk(rng.randrange(4), 3)}", "cid": "bafyvia"}
        elif collection == am.PROFILE and rng.random() < 0.6:
            pack = f"at://{rng.choice(u.dids)}/{am.STARTERPACK}/{tidk(rng.randrange(2), 10)}"
            rec["joinedViaStarterPack"] = {"uri": pack, "cid": "bafypack"}
        return rec


@dataclass
class Store:
    """A store read through a DataPlaneReader, and the model after the same history."""

    name: str
    dp: DataPlaneReader
    model: AppViewModel
    u: Universe
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    @property
    def people(self) -> list[str]:
        return self.u.subjects + [self.u.stranger]


SEEDS = [  # (seed, DIDs, events, fraction of the history applied)
    (31, 6, 900, 1.0), (32, 8, 1200, 1.0), (33, 10, 1400, 0.6), (34, 5, 1000, 1.0),
]


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Store]]:
    """One store per seed (odd seeds with merges and purges left under way between
    batches, chunks of 4 entries so keys span chunks and runs), and the model."""
    out, writers = [], []
    for seed, n_dids, n_events, part in SEEDS:
        history = NotifyHistory(seed, n_dids, n_events)
        batches = history.batches()
        batches = batches[:max(2, int(len(batches) * part))]
        path = tmp_path_factory.mktemp(f"nt{seed}") / "db.sqlite"
        writer = Writer(path, fanout=2, chunk_entries=4, merge_slices=1 if seed % 2 else None, merge_slice_rows=3,
                        purge_rows=2 if seed % 2 else None)
        model = AppViewModel()
        for batch in batches:
            apply(writer, batch)
            model.apply_all(batch)
        writers.append(writer)
        out.append(Store(f"seed{seed}", DataPlaneReader(path), model, history.u, random.Random(seed)))
    # the histories must reach every reason, or the comparison proves little
    reasons = {n["reason"] for s in out for d in s.u.dids for n in s.model.get_notifications(d)}
    assert reasons == {"follow", "like", "repost", "like-via-repost", "repost-via-repost", "mention", "quote",
                       "reply", "starterpack-joined"}, reasons
    deep = [n for s in out for d in s.u.dids for n in s.model.get_notifications(d)
            if n["reason"] == "reply" and parent_of(s.model, n["uri"]) != n["reasonSubject"]]
    assert len(deep) >= 3, "deep replies (2..4 levels down) must occur"
    yield out
    for store in out:
        store.dp.close()
    for writer in writers:
        writer.close()


def test_registry() -> None:
    """The notification RPCs are registered; UpdateNotificationSeen stays unimplemented."""
    assert "GetNotifications" in SYNC
    assert {"GetNotificationSeen", "GetUnreadNotificationCount"} <= set(ASYNC)
    assert "UpdateNotificationSeen" not in SYNC and "UpdateNotificationSeen" not in ASYNC


def test_notifications_match_the_model(stores: list[Store]) -> None:
    """Every account's notifications, every page size, both priority modes."""
    compared = 0
    for s in stores:
        for actor in s.people:
            want = expected(s.model, actor)
            for limit in (1, 2, 3, 7, 0, 100):
                assert walk(s.dp, actor, limit) == want, (s.name, actor, limit)
            assert walk(s.dp, actor, s.rng.choice([1, 4, 50]), priority=True) == \
                [n for n in want if n["priority"]], (s.name, actor)
            compared += len(want)
    assert compared > 500


@pytest.mark.parametrize("groups", [1, 2, 5])
def test_work_bound_cuts_pages_short(stores: list[Store], monkeypatch: pytest.MonkeyPatch, groups: int) -> None:
    """With at most ``groups`` records examined per page, pages end early with a cursor
    and the walk still gives everything, in order."""
    monkeypatch.setattr(notif, "NOTIFICATION_GROUPS_MAX", groups)
    for s in stores[:2]:
        for actor in s.u.dids:
            assert walk(s.dp, actor, s.rng.choice([1, 3, 50])) == expected(s.model, actor), (s.name, actor)


@pytest.mark.parametrize("posts,reposts", [(1, 1), (3, 2), (5, 1)])
def test_post_window(stores: list[Store], monkeypatch: pytest.MonkeyPatch, posts: int, reposts: int) -> None:
    """Only the account's newest N posts (reposts) are looked at: what the model finds
    when the older ones are ignored (all the history's rkeys lie within the cursor slack,
    so the window is the same for every page)."""
    monkeypatch.setattr(notif, "NOTIFICATION_POSTS", posts)
    monkeypatch.setattr(notif, "NOTIFICATION_REPOSTS", reposts)
    narrowed = 0
    for s in stores:
        for actor in s.u.dids:
            want = expected(s.model, actor, posts, reposts)
            narrowed += len(expected(s.model, actor, 10 ** 6, 10 ** 6)) - len(want)
            assert walk(s.dp, actor, s.rng.choice([1, 2, 50])) == want, (s.name, actor, posts)
    assert narrowed > 0


@pytest.mark.parametrize("lookups", [0, 1, 4])
def test_deep_lookup_bound(stores: list[Store], monkeypatch: pytest.MonkeyPatch, lookups: int) -> None:
    """With fewer keys looked up below the account's replies, the replies found that way
    are a part of the full answer: nothing else changes."""
    full: dict[tuple[str, str], list[dict[str, Any]]] = {
        (s.name, actor): walk(s.dp, actor, 50) for s in stores[:2] for actor in s.u.dids}
    monkeypatch.setattr(notif, "DEEP_LOOKUPS_MAX", lookups)
    lost = 0
    for s in stores[:2]:
        for actor in s.u.dids:
            got, want = walk(s.dp, actor, s.rng.choice([1, 5, 50])), full[(s.name, actor)]
            missing = [n for n in want if n not in got]
            assert [n for n in want if n not in missing] == got, (s.name, actor)
            assert all(n["reason"] == "reply" and parent_of(s.model, n["uri"]) != n["reasonSubject"]
                       for n in missing), (s.name, actor)
            lost += len(missing)
    assert lost > 0


def test_iso_cursor_is_older_than_then(stores: list[Store]) -> None:
    """An ISO datetime cursor (the AppView's first page: now minus a delay; the
    reference's format) gives what is strictly older than that moment."""
    s = stores[1]
    for actor in s.u.dids[:4]:
        want = expected(s.model, actor)
        times = sorted({n["timeUs"] for n in want})
        for moment in times[:: max(1, len(times) // 5)] + [BASE_US + 10 ** 12]:
            cursor = iso(moment // 1000 * 1000)
            older = [n for n in want if n["timeUs"] < moment // 1000 * 1000]
            assert walk(s.dp, actor, 3, cursor=cursor) == older, (actor, cursor)
        # with a UTC offset and without fraction digits
        assert walk(s.dp, actor, 50, cursor="2030-01-01T02:00:00+02:00") == want


def test_cursors_survive_the_appviews_delay_cursor(stores: list[Store]) -> None:
    """listNotifications passes a cursor through ``delayCursor``, which rewrites any string
    ``new Date()`` can read: run that function under node on smalldp's cursors (and some
    extreme ones) and check they come back unchanged."""
    node = node_or_fail()
    cursors = set()
    s = stores[0]
    for actor in s.u.dids:
        cursor = ""
        for _ in range(30):
            response = call(s.dp, actor_did=actor, limit=2, cursor=cursor)
            if not response.cursor:
                break
            cursor = response.cursor
            cursors.add(cursor)
    extremes = [notif.encode_notification_cursor(p) for p in [
        (0, 0, 0, 0), (1, 1, 1, 1), (12, 3, 0, 0), (2020, 12, 1, 0), ((1 << 63) - 1, (1 << 32) - 1, 99, 2),
        (tid_from_time(int(time.time() * 1e6), 5), 123456, 7, 2)]]
    cursors.update(extremes)
    script = ("const {delayCursor} = require('@atproto/bsky/dist/api/app/bsky/notification/listNotifications.js');"
              "const cs = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
              "process.stdout.write(JSON.stringify(cs.map((c) => [c, delayCursor(c, 0), delayCursor(c, 5000)])));")
    proc = subprocess.run([node, "-e", script], cwd=NODE_DIR, input=json.dumps(sorted(cursors)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert len(results) == len(cursors) >= 20
    for cursor, delayed0, delayed5 in results:
        assert delayed0 == cursor and delayed5 == cursor, cursor
    # and the ISO cursor it makes for a first page is one smalldp reads
    assert notif.decode_notification_cursor(dt.datetime.now(dt.timezone.utc).isoformat()[:23] + "Z")[1:] == (0, 0, 0)


def test_bad_input(stores: list[Store]) -> None:
    """Bad actors and cursors are invalid_argument; unknown or inactive actors get nothing."""
    dp = stores[0].dp
    for fields in [dict(actor_did=""), dict(actor_did="alice"), dict(actor_did=stores[0].u.dids[0], cursor="x"),
                   dict(actor_did=stores[0].u.dids[0], cursor="1_2_3"),
                   dict(actor_did=stores[0].u.dids[0], cursor="1_2_3_9"),
                   dict(actor_did=stores[0].u.dids[0], cursor="1_2_3_-1"),
                   dict(actor_did=stores[0].u.dids[0], cursor="yesterday"),
                   dict(actor_did=stores[0].u.dids[0], limit=101), dict(actor_did=stores[0].u.dids[0], limit=-1)]:
        with pytest.raises(RpcError) as info:
            call(dp, **fields)
        assert info.value.code == "invalid_argument", fields
    assert call(dp, actor_did=stores[0].u.stranger).notifications == []
    assert call(dp, actor_did=did("nobodyatall")).cursor == ""


def test_seen_and_unread() -> None:
    """No seen state: GetNotificationSeen has no timestamp, the unread count is 0."""
    import asyncio

    async def main() -> None:
        ctx = AppViewContext(read=None, services={})  # type: ignore[arg-type]
        seen = await ASYNC["GetNotificationSeen"](ctx, bsky_pb2.GetNotificationSeenRequest(actor_did=did("alice")))
        assert isinstance(seen, bsky_pb2.GetNotificationSeenResponse) and not seen.HasField("timestamp")
        count = await ASYNC["GetUnreadNotificationCount"](
            ctx, bsky_pb2.GetUnreadNotificationCountRequest(actor_did=did("alice"), priority=True))
        assert isinstance(count, bsky_pb2.GetUnreadNotificationCountResponse) and count.count == 0
        with pytest.raises(RpcError) as info:
            await ASYNC["GetNotificationSeen"](ctx, bsky_pb2.GetNotificationSeenRequest(actor_did="nope"))
        assert info.value.code == "invalid_argument"
    asyncio.run(main())


# ---------------------------------------------------------------- by hand


def t(seconds: int, clock: int = 0) -> str:
    """A TID rkey ``seconds`` after BASE_US + 100,000 s."""
    return int_to_tid(tid_from_time(BASE_US + 100_000_000_000 + seconds * 1_000_000, clock))


def step(writer: Writer, model: AppViewModel, events: list[dict[str, Any]]) -> None:
    """Apply events to the store and the model."""
    apply(writer, events)
    model.apply_all(events)


def test_by_hand(tmp_path: Path) -> None:
    """Each reason from events written out by hand, with the reference's rules."""
    x, a, b, c, z = did("xena"), did("abe"), did("bea"), did("cal"), did("zed")
    ev = Events()
    P = am.POST
    x1 = f"at://{x}/{P}/{t(1)}"  # X's thread root
    x2 = f"at://{x}/{P}/{t(2)}"  # another post of X (later deleted)
    a_reply = f"at://{a}/{P}/{t(10)}"  # replies to x1
    b_deep = f"at://{b}/{P}/{t(11)}"  # replies to a_reply (X two levels up)
    c_deeper = f"at://{c}/{P}/{t(12)}"  # replies to b_deep (three levels)
    x_repost = f"at://{x}/{am.REPOST}/{t(3)}"
    pack = f"at://{x}/{am.STARTERPACK}/{t(4)}"
    z_root, x_reply = f"at://{z}/{P}/{t(40)}", f"at://{x}/{P}/{t(41)}"
    a_answer, b_answer = f"at://{a}/{P}/{t(42)}", f"at://{b}/{P}/{t(43)}"
    events = [{"did": d, "time_us": BASE_US + i, "kind": "identity", "identity": {"did": d, "seq": 1}}
              for i, d in enumerate([x, a, b, c, z])]
    events += [
        ev.post(x, t(1), "root"), ev.post(x, t(2), "second"),
        ev.put(x, am.REPOST, t(3), {"$type": am.REPOST, "subject": {"uri": f"at://{z}/{P}/{t(0)}", "cid": "bafy"},
                                    "createdAt": "2024-01-01T00:00:00Z"}),
        ev.put(x, am.STARTERPACK, t(4), {"$type": am.STARTERPACK, "name": "pack", "list": "at://x/y/z",
                                         "createdAt": "2024-01-01T00:00:00Z"}),
        ev.post(a, t(10), "reply", reply_to=x1, root=x1),
        ev.post(b, t(11), "deeper", reply_to=a_reply, root=x1),
        ev.post(c, t(12), "deepest", reply_to=b_deep, root=x1),
        ev.like(a, t(20, 2), x1), ev.like(x, t(21, 2), x1),  # X liking its own post: nothing
        ev.put(b, am.LIKE, t(22, 2), {"$type": am.LIKE, "subject": {"uri": f"at://{z}/{P}/{t(0)}", "cid": "bafy"},
                                      "via": {"uri": x_repost, "cid": "bafy"}, "createdAt": "2024-01-01T00:00:00Z"}),
        ev.repost(c, t(23, 3), x2),
        ev.follow(a, t(24, 4), x), ev.follow(x, t(25, 4), x),  # a self-follow notifies (the reference's rule)
        # a mention that also quotes and replies: one notification, the mention
        ev.put(z, P, t(30), {"$type": P, "text": "@xena", "createdAt": "2024-01-01T00:00:00Z",
                             "reply": {"parent": {"uri": x1, "cid": "b"}, "root": {"uri": x1, "cid": "b"}},
                             "embed": {"$type": "app.bsky.embed.record", "record": {"uri": x1, "cid": "b"}},
                             "facets": [{"index": {"byteStart": 0, "byteEnd": 5}, "features": [
                                 {"$type": am.MENTION, "did": x}]}]}),
        # a quote that also replies: the quote, about the quoted post
        ev.put(z, P, t(31), {"$type": P, "text": "quote", "createdAt": "2024-01-01T00:00:00Z",
                             "reply": {"parent": {"uri": x1, "cid": "b"}, "root": {"uri": x1, "cid": "b"}},
                             "embed": {"$type": am.RECORD_WITH_MEDIA,
                                       "record": {"$type": "app.bsky.embed.record", "record": {"uri": x2, "cid": "b"}},
                                       "media": {"$type": am.IMAGES, "images": []}}}),
        join_event := ev.put(z, am.PROFILE, "self", {"$type": am.PROFILE,
                                                     "joinedViaStarterPack": {"uri": pack, "cid": "b"}}),
        # X replies in zed's thread; abe answers X (a reply); bea answers abe: two levels below
        # X's reply, in a thread X did not start, X is notified about its reply
        ev.post(z, t(40), "zed's root"),
        ev.post(x, t(41), "x in zed's thread", reply_to=z_root, root=z_root),
        ev.post(a, t(42), "abe answers x", reply_to=x_reply, root=z_root),
        ev.post(b, t(43), "bea answers abe", reply_to=a_answer, root=z_root),
        # abe likes x1 a second time: the reference indexes the first only
        ev.like(a, t(44, 2), x1),
    ]
    path = tmp_path / "db.sqlite"
    writer = Writer(path, fanout=2, chunk_entries=4)
    model = AppViewModel()
    step(writer, model, events)
    dp = DataPlaneReader(path)
    try:
        got = walk(dp, x, 2)
        assert got == expected(model, x)
        by_uri = {(n["uri"], n["reason"]): n for n in got}
        assert by_uri[(a_reply, "reply")]["reasonSubject"] == x1
        assert by_uri[(b_deep, "reply")]["reasonSubject"] == x1  # two levels down, to the root
        assert by_uri[(c_deeper, "reply")]["reasonSubject"] == x1  # three levels
        assert (f"at://{z}/{P}/{t(30)}", "mention") in by_uri and \
            by_uri[(f"at://{z}/{P}/{t(30)}", "mention")]["reasonSubject"] == ""
        assert by_uri[(f"at://{z}/{P}/{t(31)}", "quote")]["reasonSubject"] == x2
        assert by_uri[(f"at://{b}/{am.LIKE}/{t(22, 2)}", "like-via-repost")]["reasonSubject"] == x_repost
        assert (f"at://{x}/{am.FOLLOW}/{t(25, 4)}", "follow") in by_uri
        assert (f"at://{x}/{am.LIKE}/{t(21, 2)}", "like") not in by_uri
        join = by_uri[(f"at://{z}/{am.PROFILE}/self", "starterpack-joined")]
        assert join["reasonSubject"] == pack and join["timeUs"] == join_event["time_us"] // 1000 * 1000
        assert by_uri[(a_answer, "reply")]["reasonSubject"] == x_reply
        assert by_uri[(b_answer, "reply")]["reasonSubject"] == x_reply  # below X's reply
        assert (f"at://{a}/{am.LIKE}/{t(44, 2)}", "like") not in by_uri  # a second like
        assert [n["reason"] for n in got].count("reply") == 5
        # priority: X follows only abe (and the self-follow makes X follow itself)
        step(writer, model, [ev.follow(x, t(26, 4), a)])
        got = walk(dp, x, 50, priority=True)
        assert got == [n for n in expected(model, x) if n["priority"]]
        assert {split_uri(n["uri"])[0] for n in got} == {a, x}  # type: ignore[index]
        # the quoted post deleted: the quote is dropped, and does not fall back to the reply
        # (the reference decided "quote" when it indexed the post); an inactive author's
        # records notify nothing
        step(writer, model, [ev.delete(x, P, t(2)), ev.account(c, False, 5, "deactivated")])
        got = walk(dp, x, 3)
        assert got == expected(model, x)
        uris = {n["uri"] for n in got}
        assert f"at://{z}/{P}/{t(31)}" not in uris
        assert f"at://{c}/{am.REPOST}/{t(23, 3)}" not in uris and c_deeper not in uris
        assert b_deep in uris
        # a reply below a reply of a deactivated author: the chain breaks there
        step(writer, model, [ev.account(a, False, 6, "deactivated")])
        got = walk(dp, x, 3)
        assert got == expected(model, x) and b_deep not in {n["uri"] for n in got}
    finally:
        dp.close()
        writer.close()


def test_identity_state(tmp_path: Path) -> None:
    """identity_state: the latest identity event's handle and order time, and who holds the
    handle now (the newest claim)."""
    a, b = did("anna"), did("ben")
    path = tmp_path / "db.sqlite"
    writer = Writer(path)
    dp = DataPlaneReader(path)
    try:
        assert dp.identity_state(a) is None
        apply(writer, [{"did": a, "time_us": BASE_US + 10_000, "kind": "identity",
                        "identity": {"did": a, "seq": 1, "handle": "Anna.Test", "time": iso(BASE_US + 5000)}}])
        state = dp.identity_state(a)
        assert state == notif.IdentityState("anna.test", BASE_US + 5000, a)
        apply(writer, [{"did": b, "time_us": BASE_US + 20_000, "kind": "identity",
                        "identity": {"did": b, "seq": 1, "handle": "anna.test", "time": iso(BASE_US + 15000)}}])
        assert dp.identity_state(a) == notif.IdentityState("anna.test", BASE_US + 5000, b)
    finally:
        dp.close()
        writer.close()
