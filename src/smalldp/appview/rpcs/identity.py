"""bsky.Service's identity RPCs: GetIdentityByDid, GetIdentityByHandle (issue 15, 2D).

Both answer from the DID-document cache the server puts in ``ctx.services["identity"]``
(``smalldp.appview.identity.IdentityCache``; without it they answer ``unavailable``), with
the store's identity facts read first (``identity_state``: the handle of the account's
latest identity event, and that event's order time, which makes the cache fetch the
document again after an identity event).

* **GetIdentityByDid**: the DID's ``keys`` and ``services`` JSON exactly as the reference
  builds them, its handle (``identity.choose_handle``: the store's when verified both ways,
  else the document's first ``at://`` alias, unverified, as the reference), ``updated``
  the time the document was fetched (the reference: the time of the answer; the AppView
  does not read it).  ``not_found`` when the DID has no usable document (PLC 404, a
  did:web that is not there, a document that is not the DID's or not a DID document, a
  DID method other than plc and web); ``unavailable`` when the directory or host could
  not be reached and no earlier copy is at hand (the reference: an internal error).
* **GetIdentityByHandle**: the DID the store's identity events name for the handle
  (``getDidsByHandles``' rule), then that DID's document, which must claim the handle
  (``alsoKnownAs``, without case): both directions without DNS.  The reference resolves the
  handle with DNS and HTTPS instead and checks only that the document is the DID's; smalldp
  answers ``not_found`` for a handle no identity event named.  ``handle`` is the handle
  asked for, in lower case.  (@atproto/bsky 0.0.221 never calls it.)

A ``did`` or ``handle`` without the syntax is ``invalid_argument``.
"""

from __future__ import annotations


from smalldp.appview.identity import Identity, IdentityCache, IdentityError, choose_handle
from smalldp.appview.proto import bsky_pb2 as pb
from smalldp.appview.rpcs import args
from smalldp.appview.rpcs.base import AppViewContext, RpcError, async_rpc
from smalldp.events import valid_handle
from smalldp.store.dataplane import DataPlaneReader
from smalldp.store.dataplane.notifications import IdentityState

SERVICE = "identity"  # the key of the IdentityCache in AppViewContext.services




def _cache(ctx: AppViewContext) -> IdentityCache:
    cache = ctx.services.get(SERVICE)
    if not isinstance(cache, IdentityCache):
        raise RpcError("unavailable", "DID resolution is not set up on this server (no identity service)")
    return cache


async def _identity(ctx: AppViewContext, did: str, state: IdentityState | None) -> Identity:
    try:
        return await _cache(ctx).get(did, None if state is None else state.id_us)
    except IdentityError as exc:
        raise RpcError(exc.code, exc.message) from None


@async_rpc("GetIdentityByDid")
async def get_identity_by_did(ctx: AppViewContext, req: pb.GetIdentityByDidRequest) -> pb.GetIdentityByDidResponse:
    """The DID document's keys, services and handle (module docstring)."""
    did = args.did(req.did, "did")
    state = await ctx.read(_identity_state, did)
    identity = await _identity(ctx, did, state)
    handle = choose_handle(identity, None if state is None else state.handle,
                           None if state is None else state.handle_owner)
    return pb.GetIdentityByDidResponse(did=did, handle=handle, keys=identity.keys, services=identity.services,
                                       updated=args.timestamp_us(identity.fetched_us))


def _identity_state(dp: DataPlaneReader, did: str) -> IdentityState | None:
    return dp.identity_state(did)


def _by_handle(dp: DataPlaneReader, handle: str) -> tuple[str, IdentityState | None]:
    did = dp.dids_by_handles([handle])[0]
    return did, (dp.identity_state(did) if did else None)


@async_rpc("GetIdentityByHandle")
async def get_identity_by_handle(ctx: AppViewContext,
                                 req: pb.GetIdentityByHandleRequest) -> pb.GetIdentityByHandleResponse:
    """The identity the store's identity events name for a handle, when its DID document
    claims the handle back (module docstring)."""
    if not req.handle:
        raise args.invalid("handle", "required (a handle)")
    handle = req.handle.lower()
    if not valid_handle(handle):
        raise args.invalid("handle", f"not a handle: {req.handle[:80]!r}")
    did, state = await ctx.read(_by_handle, handle)
    if not did:
        raise RpcError("not_found", f"identity not found: no account has claimed {handle}")
    identity = await _identity(ctx, did, state)
    if not identity.claims(handle):
        raise RpcError("not_found", f"identity not found: the DID document of {did} does not claim {handle}")
    return pb.GetIdentityByHandleResponse(handle=handle, did=did, keys=identity.keys, services=identity.services,
                                          updated=args.timestamp_us(identity.fetched_us))
