"""bsky.Service's actor RPCs: GetActors, GetDidsByHandles, GetLatestRev, answered by
store/dataplane/records.py.

**GetActors** answers, per DID in request order, what the reference DataPlane's
``getActors`` (``dist/data-plane/server/routes/profile.js``) builds from its ``actor`` row
and the account's ``self`` records:

* ``exists``: smalldp applied a commit or an identity event of the account itself (the
  reference makes its ``actor`` row from those: ``indexHandle`` on each), and its latest
  account event is not a deletion (the reference deletes the row).  A DID smalldp only saw
  as a link target (followed, mentioned) does not exist, as in the reference.
* ``handle``: from the account's latest identity event that named one, else "".  The
  reference resolves the DID document and checks the handle both ways; smalldp takes the
  relay's word (a relay resolves the handle before it announces it).  An account whose
  identity event smalldp never received has no handle here (the AppView shows
  ``handle.invalid``) until one arrives or a backfill brings it.
* ``upstream_status``: "" for an active account, else its account status
  (``deactivated``, ``takendown``, ``suspended``, ... ; ``deactivated`` when the event gave
  none).  The AppView hides an actor with any other value than "" or ``active``.
* ``profile``, ``status_record``, ``germ_record``: the live ``app.bsky.actor.profile``,
  ``app.bsky.actor.status``, ``com.germnetwork.declaration`` records at rkey ``self`` as
  Get*Records gives them (the empty Record when there is none; an inactive account's
  records read as none); ``created_at`` is the profile's ``created_at``.
* ``labeler``: a live ``app.bsky.labeler.service/self`` record exists.
* ``allow_incoming_chats_from``: the chat declaration's ``allowIncoming`` when a string;
  ``allow_activity_subscriptions_from``: the notification declaration's
  ``allowSubscriptions`` when one of followers, mutuals, none, else ``followers`` (the
  reference's default; the DataPlane sets it).
* Constant, as for data smalldp does not hold: ``taken_down`` false, no takedown ref, no
  tombstone, ``priority_notifications`` false (private state), ``trusted_verifier`` false
  and no ``verified_by`` (both come from the operator's list of trusted verifiers), no
  tags, pagerank 0; ``age_assurance_status`` for the DIDs in
  ``return_age_assurance_for_dids``: status and access ``unknown`` (the reference's value
  for an account without age assurance).

**GetDidsByHandles**: per handle (compared without case), the DID whose identity event
named it latest, or ""; ``lookup_unidirectional`` is ignored, as the reference ignores it.

**GetLatestRev**: the rev of the newest commit smalldp saw from an active account, else "".
"""

from __future__ import annotations

import orjson

from smalldp.appview.proto import bsky_pb2
from smalldp.appview.rpcs import args
from smalldp.appview.rpcs.base import rpc
from smalldp.appview.rpcs.records import record_message
from smalldp.events import valid_handle
from smalldp.store.dataplane import DataPlaneReader
from smalldp.store.dataplane.records import ActorRow, StoredRecord

ACTIVITY_SUBSCRIPTIONS = ("followers", "mutuals", "none")
ACTIVITY_SUBSCRIPTIONS_DEFAULT = "followers"


def upstream_status(row: ActorRow) -> str:
    """"" for an active account, else its account status (``deactivated`` when none)."""
    return "" if row.active else (row.status or "deactivated")


def _json_field(stored: StoredRecord | None, name: str) -> object:
    if stored is None:
        return None
    record = orjson.loads(stored.json)
    return record.get(name) if isinstance(record, dict) else None


def actor_info(row: ActorRow | None, found: list[StoredRecord | None], labeler: bool,
               age_assurance: bool) -> bsky_pb2.ActorInfo:
    """One ActorInfo: ``found`` holds the account's profile, status, chat declaration,
    notification declaration and germ declaration (ACTOR_RECORDS' order)."""
    profile, status, chat, notification, germ = found
    exists = row is not None and row.seen and row.status != "deleted"
    profile_message = record_message(profile)
    allow = _json_field(notification, "allowSubscriptions")
    info = bsky_pb2.ActorInfo(
        exists=exists,
        handle=(row.handle or "") if row is not None and exists else "",
        profile=profile_message,
        labeler=labeler,
        upstream_status=upstream_status(row) if row is not None and exists else "",
        status_record=record_message(status),
        germ_record=record_message(germ),
        allow_activity_subscriptions_from=allow if isinstance(allow, str) and allow in ACTIVITY_SUBSCRIPTIONS
        else ACTIVITY_SUBSCRIPTIONS_DEFAULT,
    )
    chats = _json_field(chat, "allowIncoming")
    if isinstance(chats, str):
        info.allow_incoming_chats_from = chats
    if profile_message.HasField("created_at"):
        info.created_at.CopyFrom(profile_message.created_at)
    if age_assurance:
        info.age_assurance_status.CopyFrom(bsky_pb2.AgeAssuranceStatus(status="unknown", access="unknown"))
    return info


@rpc("GetActors")
def get_actors(dp: DataPlaneReader, req: bsky_pb2.GetActorsRequest) -> bsky_pb2.GetActorsResponse:
    """One ActorInfo per DID, in order (the module's docstring says what each field holds).
    A value that is not a DID gets the entry of an unknown account."""
    dids = args.dids(req.dids, "dids")
    if not dids:
        return bsky_pb2.GetActorsResponse()
    age = set(args.items(req.return_age_assurance_for_dids, "return_age_assurance_for_dids"))
    return bsky_pb2.GetActorsResponse(actors=[
        actor_info(row, found, labeler, asked in age)
        for asked, (row, found, labeler) in zip(req.dids, dp.actor_records(dids))])


@rpc("GetDidsByHandles")
def get_dids_by_handles(dp: DataPlaneReader, req: bsky_pb2.GetDidsByHandlesRequest) -> bsky_pb2.GetDidsByHandlesResponse:
    """Per handle, the DID that claimed it latest, or "" (also for a value that is not a
    handle)."""
    handles = args.items(req.handles, "handles")
    valid = [h if len(h) <= 253 and valid_handle(h) else "" for h in handles]
    asked = [h for h in valid if h]
    found = iter(dp.dids_by_handles(asked) if asked else [])
    return bsky_pb2.GetDidsByHandlesResponse(dids=[next(found) if h else "" for h in valid])


@rpc("GetLatestRev")
def get_latest_rev(dp: DataPlaneReader, req: bsky_pb2.GetLatestRevRequest) -> bsky_pb2.GetLatestRevResponse:
    """The rev of the newest commit seen from the actor (an active account), or ""."""
    return bsky_pb2.GetLatestRevResponse(rev=dp.latest_rev(args.did(req.actor_did, "actor_did")))
