"""bsky.Service's actor RPCs: GetActors, GetDidsByHandles, GetLatestRev, answered by
store/dataplane/records.py.

**GetActors** answers, per DID in request order, what the reference DataPlane's
``getActors`` (``dist/data-plane/server/routes/profile.js``) builds from its ``actor`` row
and the account's ``self`` records:

* ``exists``: smalldp applied a commit or an identity event of the account itself (the
  reference makes its ``actor`` row from those: ``indexHandle`` on each), and its latest
  account event is not a deletion (the reference deletes the row).  A DID smalldp only saw
  as a link target (followed, mentioned) does not exist, as in the reference.
* ``handle``: what GetIdentityByDid answers for the account (``identity.choose_handle``),
  the handle of its latest identity event when the newest claim of that handle is this
  DID and its DID document claims it back, else the document's first ``at://`` alias, in
  lower case.  The documents come from the server's DID cache (``ctx.services["identity"]``,
  smalldp.appview.identity: bounded, an hour's TTL, refreshed after identity events);
  GetActors waits at most IDENTITY_WAIT_S for the ones it does not hold yet (at most
  IDENTITY_FETCHES at once per request), and where none is at hand (not yet fetched, the
  directory unreachable, no document, no cache on this server) the identity event's handle
  stands while this account's claim of it is the newest, else "" (the AppView shows
  ``handle.invalid``).  **Not verified** the way the
  reference does it: its indexer also resolves the handle back to the DID (DNS TXT, then
  HTTPS ``.well-known``) and keeps no handle when that fails.  smalldp makes no DNS or
  HTTPS request per handle: it refuses (answers "") a document's alias that the store's
  identity events give to another account (the newest claim wins, as in
  GetDidsByHandles), but an account whose document names a handle it does not control, of
  an owner no identity event told smalldp about, shows that handle.
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

import asyncio

import orjson

from smalldp.appview.identity import Identity, IdentityCache, IdentityError, choose_handle
from smalldp.appview.proto import bsky_pb2
from smalldp.appview.rpcs import args
from smalldp.appview.rpcs.base import AppViewContext, async_rpc, rpc
from smalldp.appview.rpcs.identity import SERVICE as IDENTITY_SERVICE
from smalldp.appview.rpcs.records import record_message
from smalldp.events import valid_handle
from smalldp.store.dataplane import DataPlaneReader
from smalldp.store.dataplane.records import ActorRow, StoredRecord

ACTIVITY_SUBSCRIPTIONS = ("followers", "mutuals", "none")
ACTIVITY_SUBSCRIPTIONS_DEFAULT = "followers"
IDENTITY_WAIT_S = 2.0  # how long GetActors waits for DID documents the cache does not hold
IDENTITY_FETCHES = 16  # DID documents one GetActors request fetches at once


def upstream_status(row: ActorRow) -> str:
    """"" for an active account, else its account status (``deactivated`` when none)."""
    return "" if row.active else (row.status or "deactivated")


def _json_field(stored: StoredRecord | None, name: str) -> object:
    if stored is None:
        return None
    record = orjson.loads(stored.json)
    return record.get(name) if isinstance(record, dict) else None


def exists(row: ActorRow | None) -> bool:
    """Whether GetActors says the account exists (module docstring)."""
    return row is not None and row.seen and row.status != "deleted"


def actor_info(row: ActorRow | None, found: list[StoredRecord | None], labeler: bool,
               age_assurance: bool, handle: str) -> bsky_pb2.ActorInfo:
    """One ActorInfo: ``found`` holds the account's profile, status, chat declaration,
    notification declaration and germ declaration (ACTOR_RECORDS' order)."""
    profile, status, chat, notification, germ = found
    known = exists(row)
    profile_message = record_message(profile)
    allow = _json_field(notification, "allowSubscriptions")
    info = bsky_pb2.ActorInfo(
        exists=known,
        handle=handle if known else "",
        profile=profile_message,
        labeler=labeler,
        upstream_status=upstream_status(row) if row is not None and known else "",
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


async def handles(cache: IdentityCache | None, dids: list[str], rows: list[ActorRow | None]) -> list[str]:
    """The handle GetActors gives each DID (module docstring): "" where the account does
    not exist; the identity event's handle (or "", when a newer claim of it is another
    account's) where no DID document is at hand."""
    # the identity event's handle while this account's claim of it is the newest
    out = [row.handle or "" if row is not None and exists(row) and row.handle_owner == did else ""
           for did, row in zip(dids, rows)]
    wanted = {did: row for did, row in zip(dids, rows) if row is not None and exists(row)}
    if cache is None or not wanted:
        return out
    # What the cache holds is answered at once (nearly every account of a view: a task
    # each cost the loop ~30 µs, 30 ms for a thread of a thousand); the rest is fetched.
    found: dict[str, Identity | None] = {}
    missing: dict[str, ActorRow] = {}
    for did, row in wanted.items():
        hit = cache.cached(did, row.id_us)
        if hit is None:
            missing[did] = row
        else:
            found[did] = hit if isinstance(hit, Identity) else None
    if missing:
        gate = asyncio.Semaphore(IDENTITY_FETCHES)

        async def fetch(did: str, row: ActorRow) -> Identity | None:
            async with gate:
                try:
                    return await cache.get(did, row.id_us)
                except IdentityError:
                    return None

        tasks = {did: asyncio.ensure_future(fetch(did, row)) for did, row in missing.items()}
        done, pending = await asyncio.wait(tasks.values(), timeout=IDENTITY_WAIT_S)
        for task in pending:
            task.cancel()  # the cache's own fetch goes on (shielded) and fills it for next time
        found.update((did, task.result()) for did, task in tasks.items() if task in done)
    for i, (did, maybe) in enumerate(zip(dids, rows)):
        identity = found.get(did)
        if maybe is not None and identity is not None:
            out[i] = choose_handle(identity, maybe.handle, maybe.handle_owner).lower()
    return out


def _actor_records(dp: DataPlaneReader, dids: list[str], hints: dict[str, str]) -> tuple[
        list[tuple[ActorRow | None, list[StoredRecord | None], bool]], dict[str, str]]:
    return dp.actor_records(dids, hints)


def _unclaimed(dp: DataPlaneReader, dids: list[str], names: list[str]) -> list[str]:
    """``names`` without the handles the store's identity events give to another account."""
    asked = sorted({name for name in names if name})
    owner = dict(zip(asked, dp.dids_by_handles(asked))) if asked else {}
    return _without_unclaimed(dids, names, owner)


def _without_unclaimed(dids: list[str], names: list[str], owner: dict[str, str]) -> list[str]:
    """``names`` without those ``owner`` gives to another account."""
    return [name if not name or owner.get(name, "") in ("", did) else "" for did, name in zip(dids, names)]


@async_rpc("GetActors")
async def get_actors(ctx: AppViewContext, req: bsky_pb2.GetActorsRequest) -> bsky_pb2.GetActorsResponse:
    """One ActorInfo per DID, in order (the module's docstring says what each field holds).
    A value that is not a DID gets the entry of an unknown account."""
    dids = args.dids(req.dids, "dids")
    if not dids:
        return bsky_pb2.GetActorsResponse()
    age = set(args.items(req.return_age_assurance_for_dids, "return_age_assurance_for_dids"))
    service = ctx.services.get(IDENTITY_SERVICE)
    cache = service if isinstance(service, IdentityCache) else None
    # The handles the cached DID documents give: their owners are read with the accounts,
    # so that a document's handle (an account without identity events has no other) is
    # checked without a second read (a second wait for the reader thread).
    hints = {} if cache is None else {did: hint for did in set(dids) if (hint := cache.handle_hint(did))}
    found, owners = await ctx.read(_actor_records, dids, hints)
    rows = [row for row, _, _ in found]
    names = await handles(cache, dids, rows)
    if any(name and row is not None and name != row.handle for name, row in zip(names, rows)):
        # an account's own handle is owned as its row says (the same read and rule)
        for row in rows:
            if row is not None and row.handle and row.handle_owner is not None:
                owners.setdefault(row.handle, row.handle_owner)
        if all(not name or name in owners for name in names):
            names = _without_unclaimed(dids, names, owners)
        else:  # a document fetched or refreshed meanwhile names a handle not read yet
            names = await ctx.read(_unclaimed, dids, names)
    return bsky_pb2.GetActorsResponse(actors=[
        actor_info(row, records, labeler, asked in age, name)
        for asked, (row, records, labeler), name in zip(req.dids, found, names)])


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
