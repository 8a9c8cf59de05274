"""bsky.Service's store reads in worker processes (appview/workers.py, ``rpc_processes``).

Real worker processes (spawned) on a real store made by the real Writer, called through
the real Dispatcher. What must hold:

* the same answers, byte for byte, as the serve process's reader threads give (the path
  the conformance suites check against the official AppView), for sync handlers and an
  async handler's reads (GetActors, GetIdentityByHandle);
* a handler's RpcError keeps its code and message across the process boundary;
* a worker that dies answers ``unavailable`` for the call it held (the AppView retries
  that code) and the next call is answered by a new worker, counted;
* a handler's bug in a worker is ``internal``, its traceback logged;
* workers end with the process that started them, even when it is killed;
* the DataPlane's XRPC methods (dev.smalldp.*) answer the same from workers as from the
  reader threads, a bad cursor found by the store included (400).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Awaitable, TypeVar

import psutil
import pytest

from smalldp.api.readers import ReaderPool
from smalldp.appview import workers as workers_module
from smalldp.appview.grpc_server import Dispatcher, decode_proto
from smalldp.appview.proto import bsky_pb2 as pb
from smalldp.appview.rpcs.base import RpcError
from smalldp.appview.workers import BUG, ERROR, OK, RpcWorkers
from smalldp.store.dataplane import DataPlaneReader
from smalldp.store.writer import Writer

from helpers_server import POST, Events, apply, at_uri, did, running, tid

pytestmark = pytest.mark.timeout(120)
T = TypeVar("T")
ALICE, BOB, CAROL = did("alice"), did("bob"), did("carol")
ROOT = at_uri(ALICE, POST, tid(1))
REPLY = at_uri(BOB, POST, tid(2))


def make_store(data: Path) -> Path:
    """Three accounts; a post, a reply, a reply to the reply; likes, a repost, follows."""
    data.mkdir(parents=True, exist_ok=True)
    path = data / "smalldp.sqlite"
    writer = Writer(path)
    ev = Events()
    apply(writer, [
        ev.post(ALICE, tid(1), "hello"), ev.post(BOB, tid(2), "hi", reply_to=ROOT),
        ev.post(CAROL, tid(3), "and me", reply_to=REPLY),
        ev.like(BOB, tid(4), ROOT), ev.like(CAROL, tid(5), ROOT), ev.repost(CAROL, tid(6), ROOT),
        ev.follow(BOB, tid(7), ALICE), ev.follow(CAROL, tid(8), ALICE), ev.follow(ALICE, tid(9), BOB),
    ])
    writer.close()
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("workers") / "data")


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


# Calls of every family that reads the store (request messages built here, not read back).
CALLS: list[tuple[str, Any]] = [
    ("GetThread", pb.GetThreadRequest(post_uri=ROOT, above=10, below=10)),
    ("GetPostRecords", pb.GetPostRecordsRequest(uris=[ROOT, REPLY])),
    ("GetInteractionCounts", pb.GetInteractionCountsRequest(refs=[pb.RecordRef(uri=ROOT)])),
    ("GetLikesBySubjectSorted", pb.GetLikesBySubjectSortedRequest(subject=pb.RecordRef(uri=ROOT), limit=10)),
    ("GetLikesByActorAndSubjects", pb.GetLikesByActorAndSubjectsRequest(actor_did=BOB,
                                                                         refs=[pb.RecordRef(uri=ROOT)])),
    ("GetFollowers", pb.GetFollowersRequest(actor_did=ALICE, limit=10)),
    ("GetFollows", pb.GetFollowsRequest(actor_did=BOB, limit=10)),
    ("GetRelationships", pb.GetRelationshipsRequest(actor_did=ALICE, target_dids=[BOB, CAROL])),
    ("GetCountsForUsers", pb.GetCountsForUsersRequest(dids=[ALICE, BOB, CAROL])),
    ("GetAuthorFeed", pb.GetAuthorFeedRequest(actor_did=BOB, limit=10)),
    ("GetBlockExistence", pb.GetBlockExistenceRequest(pairs=[pb.RelationshipPair(a=ALICE, b=BOB)])),
    ("GetNotifications", pb.GetNotificationsRequest(actor_did=ALICE, limit=10)),
    ("GetActors", pb.GetActorsRequest(dids=[ALICE, BOB, "did:plc:nobody"])),
    ("GetDidsByHandles", pb.GetDidsByHandlesRequest(handles=["alice.test"])),
]


async def answers(dispatcher: Dispatcher) -> list[bytes]:
    return [await dispatcher.call_bytes(name, decode_proto(req.SerializeToString()), "connect")
            for name, req in CALLS]


def test_workers_answer_as_the_reader_threads_do(store: Path) -> None:
    async def both() -> tuple[list[bytes], list[bytes], dict[str, Any]]:
        pool = ReaderPool(store)
        workers = RpcWorkers(store, 1)
        try:
            threads = await answers(Dispatcher(pool))
            in_workers = Dispatcher(pool, workers=workers)
            processes = await answers(in_workers)
            return threads, processes, in_workers.health()
        finally:
            await workers.close()
            pool.close()

    threads, processes, health = run(both())
    for (name, _), a, b in zip(CALLS, threads, processes):
        assert a == b, name
    # not all empty: the store's data made it through (counts of ROOT: 2 likes, 1 repost, 1 reply)
    counts = pb.GetInteractionCountsResponse.FromString(threads[2])
    assert (list(counts.likes), list(counts.reposts), list(counts.replies)) == ([2], [1], [1])
    thread = pb.GetThreadResponse.FromString(processes[0])
    assert set(thread.uris) == {ROOT, REPLY, at_uri(CAROL, POST, tid(3))}
    workers = health["workers"]
    assert workers["small"]["processes"] == 1 and workers["bulk"]["processes"] == 1
    # GetThread and GetNotifications are bulk calls: both lanes ran, each in its own process
    assert len(workers["small"]["pids"]) == 1 and len(workers["bulk"]["pids"]) == 1
    assert os.getpid() not in workers["small"]["pids"] + workers["bulk"]["pids"]
    assert workers["small"]["pids"] != workers["bulk"]["pids"]


def test_an_rpc_error_crosses_with_its_code(store: Path) -> None:
    async def go() -> RpcError:
        pool = ReaderPool(store)
        workers = RpcWorkers(store, 1)
        try:
            with pytest.raises(RpcError) as caught:
                await Dispatcher(pool, workers=workers).call(
                    "GetFollowers", decode_proto(pb.GetFollowersRequest(actor_did="not a did").SerializeToString()),
                    "grpc")
            return caught.value
        finally:
            await workers.close()
            pool.close()

    error = run(go())
    assert error.code == "invalid_argument" and "actor_did" in error.message


def test_a_dead_worker_answers_unavailable_and_is_replaced(store: Path) -> None:
    async def go() -> tuple[RpcError, bytes, dict[str, Any], int]:
        pool = ReaderPool(store)
        workers = RpcWorkers(store, 1)
        dispatcher = Dispatcher(pool, workers=workers)
        try:
            first_pid = (await workers.warm())[0]  # the small lane's first
            # a call the worker holds while it is killed
            victim = psutil.Process(first_pid)
            slow = asyncio.ensure_future(workers.read(_sleep_then_pid, 5.0))
            await asyncio.sleep(0.5)
            victim.send_signal(signal.SIGKILL)
            with pytest.raises(RpcError) as caught:
                await slow
            after = await dispatcher.call_bytes(
                "GetFollowers", decode_proto(pb.GetFollowersRequest(actor_did=ALICE).SerializeToString()), "grpc")
            return caught.value, after, workers.health(), first_pid
        finally:
            await workers.close()
            pool.close()

    error, after, health, first_pid = run(go())
    assert error.code == "unavailable"
    followers = pb.GetFollowersResponse.FromString(after)
    assert sorted(f.actor_did for f in followers.followers) == sorted([BOB, CAROL])
    assert health["small"]["restarts"] == 1 and health["bulk"]["restarts"] == 0
    assert first_pid not in health["small"]["pids"] and len(health["small"]["pids"]) == 1


def _sleep_then_pid(dp: DataPlaneReader, seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _raise_bug(dp: DataPlaneReader) -> int:
    raise KeyError("a bug")


def test_a_bug_in_a_worker_is_reported_with_its_traceback(store: Path) -> None:
    # The outcome of a handler that raises something else than RpcError ...
    workers_module._reader = DataPlaneReader(store)
    try:
        workers_module._sync = {"GetFollowers": lambda dp, req: (_ for _ in ()).throw(ZeroDivisionError("x"))}
        kind, value, ran = workers_module._answer("GetFollowers", pb.GetFollowersRequest(actor_did=ALICE)
                                                  .SerializeToString())
        assert kind == BUG and "ZeroDivisionError" in value and ran >= 0
        workers_module._sync = {"GetFollowers": lambda dp, req: pb.GetFollowsResponse()}
        kind, value, _ = workers_module._answer("GetFollowers", b"")
        assert kind == BUG and "GetFollowsResponse" in value  # the wrong message type is a bug too
        workers_module._sync = {"GetFollowers": lambda dp, req: (_ for _ in ()).throw(
            RpcError("not_found", "nobody"))}
        assert workers_module._answer("GetFollowers", b"")[:2] == (ERROR, ("not_found", "nobody"))
        assert workers_module._read(_sleep_then_pid, (0.0,))[:2] == (OK, os.getpid())
    finally:
        workers_module._reader.close()
        workers_module._reader, workers_module._sync = None, {}

    # ... and from a real worker: an async handler's read raising a bug gets its traceback
    # (the dispatcher logs an async handler's exception and answers internal)
    async def go() -> str:
        pool = ReaderPool(store)
        workers = RpcWorkers(store, 1)
        try:
            with pytest.raises(workers_module.WorkerBug) as caught:
                await Dispatcher(pool, workers=workers).read(_raise_bug)
            return str(caught.value)
        finally:
            await workers.close()
            pool.close()

    assert "KeyError: 'a bug'" in run(go())


def test_workers_end_with_their_parent(store: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import asyncio, sys
        from pathlib import Path
        from smalldp.appview.workers import RpcWorkers

        async def main():
            workers = RpcWorkers(Path({str(store)!r}), 2)
            pids = await workers.warm()
            print(" ".join(map(str, sorted(set(pids)))), flush=True)
            await asyncio.sleep(600)

        if __name__ == "__main__":
            asyncio.run(main())
    """)
    (tmp_path / "parent.py").write_text(script)
    parent = subprocess.Popen([sys.executable, str(tmp_path / "parent.py")], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) >= 2 and parent.pid not in pids
        assert all(psutil.pid_exists(pid) for pid in pids)
    finally:
        parent.kill()  # no clean-up of its own: the workers must notice
        parent.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_closed_workers_refuse(store: Path) -> None:
    async def go() -> RpcError:
        workers = RpcWorkers(store, 1)
        await workers.close()
        with pytest.raises(RpcError) as caught:
            await workers.answer("GetFollowers", b"")
        return caught.value

    assert run(go()).code == "unavailable"
    with pytest.raises(ValueError):
        RpcWorkers(store, 0)


# The DataPlane's XRPC methods (dev.smalldp.*) read the store in the workers too.
XRPC_CALLS: list[tuple[str, dict[str, Any] | list[tuple[str, str]]]] = [
    ("getRecords", [("uris", ROOT), ("uris", REPLY)]),
    ("getInteractionCounts", [("uris", ROOT)]),
    ("getLikesBySubject", {"subject": ROOT, "limit": 1}),
    ("getRepostsBySubject", {"subject": ROOT}),
    ("getLikesByActorAndSubjects", [("actor", BOB), ("subjects", ROOT)]),
    ("getFollowers", {"actor": ALICE}),
    ("getFollows", {"actor": BOB}),
    ("getBlocks", {"actor": BOB}),
    ("getRelationships", [("viewer", ALICE), ("targets", BOB), ("targets", CAROL)]),
    ("getCountsForUsers", [("dids", ALICE), ("dids", BOB)]),
    ("getActors", [("dids", ALICE), ("dids", CAROL)]),
    ("getAuthorFeed", {"actor": BOB}),
    ("getTimeline", {"viewer": BOB}),
    ("getThread", {"uri": ROOT}),
    ("getFollowsFollowing", [("viewer", BOB), ("targets", ALICE)]),
    ("getFollowers", {"actor": ALICE, "cursor": "not-a-cursor"}),  # 400: the store's BadCursor
    ("getFollowers", {"actor": "nobody"}),  # 400: a parameter
]


def test_xrpc_dataplane_methods_in_workers_answer_as_on_threads(store: Path) -> None:
    async def ask(rpc_processes: int) -> list[tuple[int, Any]]:
        async with running(store, rpc_processes=rpc_processes) as client:
            replies = [await client.get(f"/xrpc/dev.smalldp.{name}", params) for name, params in XRPC_CALLS]
            health = (await client.get("/xrpc/_health")).json["grpc"]["workers"]
        out: list[tuple[int, Any]] = [(r.status, r.json) for r in replies]
        return out + [(0, health)]

    threads, processes = run(ask(0)), run(ask(1))
    assert threads[-1] == (0, None)  # no workers: every read on the reader threads
    health = processes[-1][1]
    assert len(health["small"]["pids"]) == 1 and os.getpid() not in health["small"]["pids"]
    for (name, params), a, b in zip(XRPC_CALLS, threads, processes):
        assert a == b, (name, params)
    statuses = [status for status, _ in threads[:-1]]
    assert statuses[:-2] == [200] * (len(XRPC_CALLS) - 2) and statuses[-2:] == [400, 400]
    assert "cursor" in threads[-3][1]["message"]
    assert sorted(f["actorDid"] for f in threads[5][1]["followers"]) == sorted([BOB, CAROL])
