"""bsky.Service's list RPCs: an actor's lists, a list's members and their number, and
an actor's memberships, answered by store/dataplane/lists.py (and base.py).

A list's members are the live listitems of the list's *owner* that point at it (the
reference's indexer refuses listitems by anyone else, so both agree), one per member
(its oldest live listitem: the reference indexes one per list and subject); newest first
by rkey (the reference: ``sortAt``); inactive owners' lists are empty.
"""

from __future__ import annotations

from smalldp.appview.proto import bsky_pb2
from smalldp.appview.rpcs import args
from smalldp.appview.rpcs.base import rpc
from smalldp.store.dataplane import DataPlaneReader


@rpc("GetActorLists")
def get_actor_lists(dp: DataPlaneReader, req: bsky_pb2.GetActorListsRequest) -> bsky_pb2.GetActorListsResponse:
    """The actor's list records, newest first."""
    actor, limit, cursor = args.did(req.actor_did, "actor_did"), args.limit(req.limit), args.cursor(req.cursor)
    with args.cursor_errors():
        uris, next_cursor = dp.actor_lists(actor, limit, cursor)
    return bsky_pb2.GetActorListsResponse(list_uris=uris, cursor=next_cursor or "")


@rpc("GetListMembers")
def get_list_members(dp: DataPlaneReader, req: bsky_pb2.GetListMembersRequest) -> bsky_pb2.GetListMembersResponse:
    """The owner's listitems of the list, newest first, one per member: {uri, did} (did the
    member). Costs one read of each listed member's key (its listitems' backlinks)."""
    list_uri = args.at_uri(req.list_uri, "list_uri")
    limit, cursor = args.limit(req.limit), args.cursor(req.cursor)
    with args.cursor_errors():
        items, next_cursor = dp.list_members(list_uri, limit, cursor)
    return bsky_pb2.GetListMembersResponse(
        listitems=[bsky_pb2.ListItemInfo(uri=item["uri"], did=item["did"]) for item in items],
        cursor=next_cursor or "")


@rpc("GetListMembership")
def get_list_membership(dp: DataPlaneReader,
                        req: bsky_pb2.GetListMembershipRequest) -> bsky_pb2.GetListMembershipResponse:
    """Per list, the owner's listitem that puts the actor in it (the oldest live one if
    several), or ""."""
    actor = args.did(req.actor_did, "actor_did")
    lists = args.uris(args.items(req.list_uris, "list_uris"))
    return bsky_pb2.GetListMembershipResponse(listitem_uris=dp.list_membership(actor, lists) if lists else [])


@rpc("GetListCounts")
def get_list_counts(dp: DataPlaneReader, req: bsky_pb2.GetListCountsRequest) -> bsky_pb2.GetListCountsResponse:
    """Per ref, the number of the list's listitems (records: one account listed twice
    counts twice, where the reference's indexer keeps only the first, and GetListMembers
    lists it once). Counting members would read every listitem's subject (the index
    counts records per key from chunk headers, not what they point at): a list of
    100,000 is a count here, and would be 100,000 lookups."""
    uris = args.ref_uris(req.refs, "refs")
    return bsky_pb2.GetListCountsResponse(list_items=dp.list_counts(uris) if uris else [])


@rpc("GetListCount")
def get_list_count(dp: DataPlaneReader, req: bsky_pb2.GetListCountRequest) -> bsky_pb2.GetListCountResponse:
    """The number of one list's listitems (as GetListCounts)."""
    list_uri = args.at_uri(req.list_uri, "list_uri")
    return bsky_pb2.GetListCountResponse(count=dp.list_counts([list_uri])[0])
