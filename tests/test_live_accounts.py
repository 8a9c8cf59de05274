"""Account and identity events across a failover between Jetstream instances fed by
different relays (issue 10, parts 1 and 2), over real websockets on 127.0.0.1.

Each instance is a FakeJetstream playing the same network events stamped as that
instance would: its own receive clock (``time_us``) and its relay's own ``seq`` space
(bsky.network's are ~3.1e10, another relay's can start near zero). `smalldp serve`
follows one instance, the instance dies, and smalldp resumes on the next by time
(cursor = newest time_us seen minus the 5 s rewind), so it replays a little.

Checked twice: by hand (the facts each scenario is built to test, which the seq-based
rule got wrong), and against the brute-force model (tests/appview_model.py) fed exactly
the lines smalldp was sent, in that order.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from appview_model import AppViewModel
from fake_jetstream import FakeJetstream, Fault
from helpers_server import BASE_US, LIKE, POST, did, iso, running, tid
from smalldp.store.dataplane import DataPlaneReader
from smalldp.store.schema import db_path
from test_live import follow, last_op_time, live_settings

STEP_US = 20_000  # 50 events/s of network time: the 5 s rewind replays ~250 events
RECEIVE_DELAY_US = 300_000  # an instance sees an event this long after it happened upstream
BIG_RELAY = 31_527_000_000  # seq space of bsky.network-like relays
SMALL_RELAY = 1_000  # a relay that numbers from near zero
FILLERS = [did(f"fill{i}") for i in range(12)]
X, Y, W, V, Z, U = (did(n) for n in ("xx", "yy", "ww", "vv", "zz", "uu"))


class Network:
    """The network's events in the order they happened, without instance stamps."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.rkeys: dict[str, str] = {}  # a post's name in the test -> its rkey (a TID)

    def _add(self, event: dict[str, Any]) -> int:
        self.events.append(event)
        return len(self.events) - 1

    def happened_us(self, index: int) -> int:
        return BASE_US + index * STEP_US

    def post(self, repo: str, name: str) -> int:
        rkey = self.rkeys[name] = tid(len(self.events) * STEP_US, 1)
        return self._add({"did": repo, "kind": "commit", "commit": {
            "rev": tid(len(self.events) * STEP_US, 5), "operation": "create", "collection": POST, "rkey": rkey,
            "record": {"$type": POST, "text": name, "createdAt": "2024-01-01T00:00:00.000Z"},
            "cid": f"bafyrei{rkey}"}})

    def like(self, repo: str, rkey: str, subject: str) -> int:
        return self._add({"did": repo, "kind": "commit", "commit": {
            "rev": tid(len(self.events) * STEP_US, 5), "operation": "create", "collection": LIKE, "rkey": rkey,
            "record": {"$type": LIKE, "subject": {"uri": subject, "cid": "bafyreis"},
                       "createdAt": "2024-01-01T00:00:00.000Z"}}})

    def account(self, repo: str, active: bool, status: str | None = None, *, timed: bool = True) -> int:
        body: dict[str, Any] = {"active": active, "did": repo}
        if status is not None:
            body["status"] = status
        if timed:
            body["time"] = iso(self.happened_us(len(self.events)))
        return self._add({"did": repo, "kind": "account", "account": body})

    def identity(self, repo: str, handle: str, *, with_seq: bool = True) -> int:
        event = {"did": repo, "kind": "identity", "identity": {
            "did": repo, "handle": handle, "time": iso(self.happened_us(len(self.events)))}}
        if not with_seq:
            event["no_seq"] = True  # instance_lines leaves seq out
        return self._add(event)

    def filler(self, n: int) -> None:
        """Ordinary traffic: posts and likes of other accounts."""
        for i in range(n):
            author = FILLERS[i % len(FILLERS)]
            if i % 3 == 0:
                self.post(author, f"filler{i}")
            else:
                target = FILLERS[(i * 7) % len(FILLERS)]
                self.like(author, tid(len(self.events) * STEP_US, 9), f"at://{target}/{POST}/{tid(0, 9)}")


def instance_lines(net: Network, order: list[int], *, seq_base: int, clock_us: int) -> list[str]:
    """One instance's capture: the network events of ``order``, stamped with receive times
    from its own clock (``clock_us`` apart from the others) and seqs of its relay."""
    lines = []
    for position, index in enumerate(order):
        event = json.loads(json.dumps(net.events[index]))
        no_seq = event.pop("no_seq", False)
        received = max(net.happened_us(index), net.happened_us(order[position - 1]) if position else 0)
        event["time_us"] = received + RECEIVE_DELAY_US + clock_us + position  # increasing per instance
        body = event.get(event["kind"]) if event["kind"] in ("account", "identity") else None
        if body is not None and not no_seq:
            body["seq"] = seq_base + position
        lines.append(json.dumps(event, separators=(",", ":")))
    return lines


def sent(server: FakeJetstream, connection: int = 0) -> list[str]:
    """The lines a FakeJetstream sent on one connection (from its cursor, as many as it sent)."""
    conn = server.connections[connection]
    cursor = int(conn.query["cursor"][0]) if "cursor" in conn.query else None
    lines = [line for line, t in zip(server.lines, server.times) if cursor is None or t >= cursor]
    return lines[:conn.sent]


def expected_model(lines: list[str]) -> AppViewModel:
    model = AppViewModel()
    model.apply_all(json.loads(line) for line in lines)
    return model


async def compare(path: Path, model: AppViewModel, dids: list[str], handles: list[str]) -> None:
    """Actors, handles, author feeds and like counts equal the model's (over HTTP)."""
    async with running(path) as client:
        body = await client.ok("/xrpc/dev.smalldp.getActors", [("dids", d) for d in dids])
        want = model.get_actors(dids)
        assert [(a["did"], a["status"], a["handle"]) for a in body["actors"]] == \
               [(a["did"], a["status"], a["handle"]) for a in want]  # type: ignore[index]
        body = await client.ok("/xrpc/dev.smalldp.getDidsByHandles", [("handles", h) for h in handles])
        assert [{got} <= want for got, want in zip(body["dids"], model.get_dids_by_handles(handles))] == \
               [True] * len(handles), body
        for repo in dids:
            body = await client.ok("/xrpc/dev.smalldp.getAuthorFeed", {"actor": repo, "limit": "100"})
            assert body["items"] == model.get_author_feed(repo), repo


def state(path: Path, repo: str) -> tuple[bool, str | None, str | None]:
    reader = DataPlaneReader(path)
    try:
        found = reader.actor_state(repo)
        assert found is not None, repo
        return bool(found["active"]), found["status"], found["handle"]
    finally:
        reader.close()


def posts(path: Path, net: Network, repo: str) -> list[str]:
    """The names of the live posts of ``repo`` (its author feed), newest first."""
    names = {rkey: name for name, rkey in net.rkeys.items()}
    reader = DataPlaneReader(path)
    try:
        items, _ = reader.author_feed(repo, 100, None, "posts_with_replies")
        return [names[item["uri"].rsplit("/", 1)[1]] for item in items]
    finally:
        reader.close()


def test_failover_to_an_instance_whose_relay_has_far_lower_seqs(tmp_path: Path) -> None:
    """A's relay numbers events ~3.1e10, B's from 1,000. After the failover, every
    account and identity event B delivers must apply: a reactivation, a takedown, a new
    handle, and a deleted account coming back and posting at once (within seconds, far
    inside the 10-minute window the old purge rule ignored)."""
    net = Network()
    net.filler(60)
    net.post(X, "xpost1")
    net.post(Y, "yold1")
    net.post(Y, "yold2")
    net.identity(W, "w-old.example.com")
    net.filler(40)
    net.account(X, False, "deactivated")
    net.account(Y, False, "deleted")
    net.filler(60)
    cut = len(net.events)  # A dies here
    net.filler(20)
    net.account(X, True)
    net.account(Y, True)
    net.post(Y, "ynew1")  # right after coming back
    net.identity(W, "w-new.example.com")
    net.post(V, "vpost1")
    net.account(V, False, "takendown")
    net.filler(40)
    order = list(range(len(net.events)))
    lines_a = instance_lines(net, order, seq_base=BIG_RELAY, clock_us=0)
    lines_b = instance_lines(net, order, seq_base=SMALL_RELAY, clock_us=1_500_000)  # another clock too

    async def main() -> list[str]:
        async with FakeJetstream(lines_a, faults={0: Fault(die_after=cut)}) as a, FakeJetstream(lines_b) as b:
            settings = live_settings(tmp_path / "live", [a.url, b.url], rewind_s=5)
            await follow(settings, last_op_time(lines_b))
            assert a.connections[0].sent == cut and len(b.connections) == 1
            assert int(b.connections[0].query["cursor"][0]) == last_op_time(lines_a[:cut]) - 5_000_000
            return sent(a) + sent(b)

    delivered = asyncio.run(main())
    path = db_path(tmp_path / "live")
    assert state(path, X)[:2] == (True, None)  # the reactivation from the low-seq relay applied
    assert posts(path, net, X) == ["xpost1"]
    assert state(path, Y)[:2] == (True, None)
    assert posts(path, net, Y) == ["ynew1"]  # purged what it had, kept what it wrote on coming back
    assert state(path, W)[2] == "w-new.example.com"
    assert state(path, V)[:2] == (False, "takendown")
    assert posts(path, net, V) == []
    model = expected_model(delivered)
    asyncio.run(compare(path, model, [X, Y, W, V, *FILLERS[:3]],
                        ["w-old.example.com", "w-new.example.com"]))


def test_failover_back_and_forth_between_seq_spaces(tmp_path: Path) -> None:
    """A (low seqs) -> B (seqs ~3.1e10) -> A again. B's relay delivers Z's old
    deactivation late, after Z's reactivation and with a seq far above anything A sent:
    it must not undo the reactivation. Back on A, U's reactivation has a seq far below
    B's: it must apply. One event carries no `time` (ordered by receive time), one no
    `seq`; the replays on each side repeat events at equal times with unrelated seqs."""
    net = Network()
    net.filler(50)
    net.post(Z, "zpost1")
    net.post(U, "upost1")
    late = net.account(Z, False, "deactivated")
    net.filler(5)
    net.account(Z, True)
    net.filler(50)
    first_cut = len(net.events)  # A dies here
    net.filler(10)
    net.account(U, False, "suspended")
    net.identity(U, "u-one.example.com")
    net.filler(80)
    second_cut = len(net.events)  # B dies around here
    net.filler(10)
    net.account(U, True, timed=False)  # no time: B's replayed suspension is older by receive time
    net.identity(U, "u-two.example.com", with_seq=False)  # no seq: its time alone places it
    net.post(U, "upost2")
    net.filler(30)
    order_a = list(range(len(net.events)))
    # B's relay crawled Z's PDS late: the deactivation reaches B well after the reactivation.
    order_b = [i for i in order_a if i != late]
    order_b.insert(first_cut + 3, late)
    lines_a = instance_lines(net, order_a, seq_base=SMALL_RELAY, clock_us=0)
    lines_b = instance_lines(net, order_b, seq_base=BIG_RELAY, clock_us=-800_000)

    async def main() -> list[str]:
        a_times = [json.loads(line)["time_us"] for line in lines_a]
        b_times = [json.loads(line)["time_us"] for line in lines_b]
        # B dies after sending up to ~second_cut (counted from where smalldp resumes on it).
        resume_b = a_times[first_cut - 1] - 5_000_000
        b_sent = second_cut - sum(1 for t in b_times if t < resume_b)
        async with FakeJetstream(lines_a, faults={0: Fault(die_after=first_cut)}) as a, \
                FakeJetstream(lines_b, faults={0: Fault(die_after=b_sent)}) as b, \
                FakeJetstream(lines_a) as a_again:
            settings = live_settings(tmp_path / "live", [a.url, b.url, a_again.url], rewind_s=5)
            await follow(settings, last_op_time(lines_a))
            assert len(a.connections) == 1 and len(b.connections) == 1 and len(a_again.connections) == 1
            assert b.connections[0].sent == b_sent
            return sent(a) + sent(b) + sent(a_again)

    delivered = asyncio.run(main())
    assert sum(1 for line in delivered if json.loads(line).get("account", {}).get("did") == Z
               and json.loads(line)["account"]["active"] is False) >= 2  # the late copy did arrive
    path = db_path(tmp_path / "live")
    assert state(path, Z)[:2] == (True, None)
    assert posts(path, net, Z) == ["zpost1"]
    assert state(path, U) == (True, None, "u-two.example.com")
    assert posts(path, net, U) == ["upost2", "upost1"]
    model = expected_model(delivered)
    asyncio.run(compare(path, model, [Z, U, *FILLERS[:3]], ["u-one.example.com", "u-two.example.com"]))
