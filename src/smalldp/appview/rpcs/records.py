"""bsky.Service's Get*Records RPCs: record bodies by at-uri, one ``Record`` per uri in
request order, answered by store/dataplane/records.py.

Each answers what the reference DataPlane's ``getRecords``
(``dist/data-plane/server/routes/records.js``) builds from its ``record`` table:

* ``record``: the record's JSON as UTF-8 bytes.  smalldp gives the JSON as it came, except
  for the compact bodies of likes, reposts, follows, blocks, list items and list blocks
  (store/bodies.py), given back as the same JSON value with sorted keys and no spaces.
* ``cid``: the record's CID ("" when Jetstream sent none: the AppView drops the record).
* ``created_at``: the record's ``createdAt`` when it parses as a datetime, at millisecond
  precision (the reference reads it with JavaScript's ``new Date``); unset otherwise.
* ``indexed_at``: when smalldp received the event that wrote this version (Jetstream's
  ``time_us``), at millisecond precision; the reference uses its firehose event's time.
* ``sorted_at``: the earlier of the two (indexed_at when there is no created_at).
* ``taken_down``: always false (takedowns are the AppView operator's state; an account
  taken down upstream is hidden by its account status).

Where there is no live record (unknown, deleted, an inactive author, a collection whose
bodies smalldp does not keep, a uri of another collection than the RPC's, an at-uri that
does not parse) the entry is the reference's empty one: ``Record{record: b"null"}``, no
CID, no times.  The AppView drops such an entry, as it drops one without a CID.

The bodies of the record's collection must be kept (the ``body_collections`` setting):
by default every collection these RPCs read is.  Records written by a smalldp from before
the small-record codec (schema 6 and earlier) have no body for likes, reposts, follows,
blocks, list items and list blocks: those read as absent until written again.
"""

from __future__ import annotations

import datetime

import orjson

from smalldp.appview.proto import bsky_pb2
from smalldp.appview.rpcs import args
from smalldp.appview.rpcs.base import SyncHandler, rpc
from smalldp.store.dataplane import DataPlaneReader
from smalldp.store.dataplane.records import StoredRecord, _parse_datetime
from smalldp.timestamps import datetime_us

EMPTY_JSON = b"null"  # the reference's bytes for a record it does not have: JSON.stringify(null)

# RPC -> the collection it reads (records.js: getRecords(db, ids.<Collection>)).
COLLECTIONS: dict[str, str] = {
    "GetBlockRecords": "app.bsky.graph.block",
    "GetFeedGeneratorRecords": "app.bsky.feed.generator",
    "GetFollowRecords": "app.bsky.graph.follow",
    "GetLikeRecords": "app.bsky.feed.like",
    "GetListBlockRecords": "app.bsky.graph.listblock",
    "GetListItemRecords": "app.bsky.graph.listitem",
    "GetListRecords": "app.bsky.graph.list",
    "GetProfileRecords": "app.bsky.actor.profile",
    "GetRepostRecords": "app.bsky.feed.repost",
    "GetThreadGateRecords": "app.bsky.feed.threadgate",
    "GetPostgateRecords": "app.bsky.feed.postgate",
    "GetLabelerRecords": "app.bsky.labeler.service",
    "GetActorChatDeclarationRecords": "chat.bsky.actor.declaration",
    "GetNotificationDeclarationRecords": "app.bsky.notification.declaration",
    "GetGermDeclarationRecords": "com.germnetwork.declaration",
    "GetStarterPackRecords": "app.bsky.graph.starterpack",
    "GetVerificationRecords": "app.bsky.graph.verification",
    "GetStatusRecords": "app.bsky.actor.status",
}
POST = "app.bsky.feed.post"
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def created_ms(record: object) -> int | None:
    """Milliseconds since the epoch of a record's ``createdAt`` when it is a datetime with a
    timezone (RFC 3339, or ISO 8601 as Python reads it), else None."""
    created = record.get("createdAt") if isinstance(record, dict) else None
    if not isinstance(created, str):
        return None
    try:
        return datetime_us(created) // 1000
    except ValueError:
        pass
    moment = _parse_datetime(created.upper())  # before 1970, lower-case 't' or 'z' (JavaScript reads them)
    if moment is None:
        return None
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def record_message(stored: StoredRecord | None) -> bsky_pb2.Record:
    """The Record of a stored body, or the reference's empty Record."""
    if stored is None:
        return bsky_pb2.Record(record=EMPTY_JSON)
    created = created_ms(orjson.loads(stored.json))
    indexed = stored.indexed_us // 1000
    out = bsky_pb2.Record(record=stored.json, cid=stored.cid, indexed_at=args.timestamp_ms(indexed),
                          sorted_at=args.timestamp_ms(indexed if created is None else min(created, indexed)))
    if created is not None:
        out.created_at.CopyFrom(args.timestamp_ms(created))
    return out


def records(dp: DataPlaneReader, uris: list[str], collection: str) -> list[bsky_pb2.Record]:
    """One Record per uri, in order (records of ``collection`` only)."""
    return [record_message(stored) for stored in dp.stored_records(uris, collection)] if uris else []


def _records_rpc(method: str, collection: str) -> SyncHandler:
    """Register the handler of one Get*Records method (they differ only by collection)."""
    def handler(dp: DataPlaneReader, req: bsky_pb2.GetLikeRecordsRequest) -> bsky_pb2.GetLikeRecordsResponse:
        response_type = getattr(bsky_pb2, f"{method}Response")
        return response_type(records=records(dp, args.items(req.uris, "uris"), collection))  # type: ignore[no-any-return]
    handler.__name__ = handler.__qualname__ = "get_" + method[3:]
    handler.__doc__ = f"bsky.Service/{method}: the live {collection} record at each uri, or the empty Record."
    return rpc(method)(handler)


HANDLERS: dict[str, SyncHandler] = {method: _records_rpc(method, collection) for method, collection in COLLECTIONS.items()}


@rpc("GetPostRecords")
def get_post_records(dp: DataPlaneReader, req: bsky_pb2.GetPostRecordsRequest) -> bsky_pb2.GetPostRecordsResponse:
    """The live post at each uri (or the empty Record) and its PostRecordMeta.

    ``has_thread_gate`` / ``has_post_gate``: a live gate record of the post's author at
    the post's rkey names the post (store/dataplane/records.py ``post_gates``).

    ``violates_thread_gate``: the post is a reply that breaks its thread root's gate, by
    the reference's rules, decided when read with the reference's "when indexed" kept by
    receive times (store/dataplane/gates.py); the AppView then leaves the reply out of
    threads and gives it no ``reply`` context in feeds.

    ``violates_embedding_rules``: the post quotes a post whose post gate forbids embedding
    (a ``disableRule``), decided the same way (store/dataplane/gates.py); the AppView then
    shows the embed detached. ``has_media``, ``is_reply`` and ``has_video`` stay unset, as
    the reference leaves them.
    """
    uris = args.items(req.uris, "uris")
    if not uris:
        return bsky_pb2.GetPostRecordsResponse()
    stored, gates = dp.stored_posts(uris)
    return bsky_pb2.GetPostRecordsResponse(
        records=[record_message(one) for one in stored],
        meta=[bsky_pb2.PostRecordMeta(has_thread_gate=thread, has_post_gate=post, violates_thread_gate=violates,
                                      violates_embedding_rules=detached)
              for thread, post, violates, detached in gates])


