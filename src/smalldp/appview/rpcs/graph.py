"""bsky.Service's social-graph RPCs: follows, followers, blocks (direct, through lists,
either way), relationships, list-block subscriptions, an account's counts, starter
packs by author and actor search, answered by store/dataplane/graph.py (and base.py).

Differences from the reference DataPlane (which reads Postgres tables its indexer fills)
that hold for every RPC here: records are ordered by their rkey as a TID (the reference:
``sortAt``, the earlier of createdAt and indexedAt); inactive accounts are invisible in
lists and lookups (the reference keeps their rows and lets the AppView hide them) but
count in GetCountsForUsers, as the reference's aggregates; a cursor comes only when
there is more.  Follows, blocks and list blocks are one record per pair, as the
reference indexes them: an account that followed another twice is listed once, with
the pair's oldest live follow, and that follow is the one the pair's lookups name (the
reference's is the first it indexed: the same one when records arrive in rkey order;
store/dataplane/base.py).
"""

from __future__ import annotations

from smalldp.appview.proto import bsky_pb2
from smalldp.appview.rpcs import args
from smalldp.appview.rpcs.base import rpc
from smalldp.derived import BLOCK, FOLLOW, STARTERPACK
from smalldp.store.dataplane import DataPlaneReader


@rpc("GetActorFollowsActors")
def get_actor_follows_actors(dp: DataPlaneReader,
                             req: bsky_pb2.GetActorFollowsActorsRequest) -> bsky_pb2.GetActorFollowsActorsResponse:
    """Per target, the actor's follow record of it (the oldest live one if several), or ""."""
    actor = args.did(req.actor_did, "actor_did")
    targets = args.dids(req.target_dids, "target_dids")
    return bsky_pb2.GetActorFollowsActorsResponse(uris=dp.actor_follows_actors(actor, targets) if targets else [])


@rpc("GetFollowers")
def get_followers(dp: DataPlaneReader, req: bsky_pb2.GetFollowersRequest) -> bsky_pb2.GetFollowersResponse:
    """Follow records whose subject is the actor, newest first, one per follower."""
    actor, limit, cursor = args.did(req.actor_did, "actor_did"), args.limit(req.limit), args.cursor(req.cursor)
    with args.cursor_errors():
        items, next_cursor = dp.followers(actor, limit, cursor)
    return bsky_pb2.GetFollowersResponse(followers=[_follow_info(item) for item in items], cursor=next_cursor or "")


@rpc("GetFollows")
def get_follows(dp: DataPlaneReader, req: bsky_pb2.GetFollowsRequest) -> bsky_pb2.GetFollowsResponse:
    """The actor's follow records, newest first, one per followed account."""
    actor, limit, cursor = args.did(req.actor_did, "actor_did"), args.limit(req.limit), args.cursor(req.cursor)
    with args.cursor_errors():
        items, next_cursor = dp.out_edges(actor, FOLLOW, limit, cursor)
    return bsky_pb2.GetFollowsResponse(follows=[_follow_info(item) for item in items], cursor=next_cursor or "")


def _follow_info(item: dict[str, str]) -> bsky_pb2.FollowInfo:
    return bsky_pb2.FollowInfo(uri=item["uri"], actor_did=item["actorDid"], subject_did=item["subjectDid"])


@rpc("GetFollowsFollowing")
def get_follows_following(dp: DataPlaneReader,
                          req: bsky_pb2.GetFollowsFollowingRequest) -> bsky_pb2.GetFollowsFollowingResponse:
    """Per target, every account the viewer follows that follows the target (account-ID
    order; the AppView shows the first five and the number)."""
    viewer = args.did(req.actor_did, "actor_did")
    targets = args.dids(req.target_dids, "target_dids")
    results = dp.follows_following(viewer, targets) if targets else []
    return bsky_pb2.GetFollowsFollowingResponse(results=[
        bsky_pb2.FollowsFollowing(target_did=original, dids=result["dids"])
        for original, result in zip(req.target_dids, results)])


@rpc("GetRelationships")
def get_relationships(dp: DataPlaneReader,
                      req: bsky_pb2.GetRelationshipsRequest) -> bsky_pb2.GetRelationshipsResponse:
    """Per target: following, followedBy, blocking, blockedBy (record uris),
    blockingByList, blockedByList (the lists' uris, as the reference answers: the AppView
    hydrates them to check they are moderation lists); never muted (mutes are private
    data smalldp does not hold)."""
    viewer = args.did(req.actor_did, "actor_did")
    targets = args.dids(req.target_dids, "target_dids")
    found = dp.relationships(viewer, targets, list_uris=True) if targets else []
    return bsky_pb2.GetRelationshipsResponse(relationships=[
        bsky_pb2.Relationships(muted=False, muted_by_list="", following=r["following"], followed_by=r["followedBy"],
                               blocking=r["blocking"], blocked_by=r["blockedBy"],
                               blocking_by_list=r["blockingByList"], blocked_by_list=r["blockedByList"])
        for r in found])


@rpc("GetBlockExistence")
def get_block_existence(dp: DataPlaneReader,
                        req: bsky_pb2.GetBlockExistenceRequest) -> bsky_pb2.GetBlockExistenceResponse:
    """Per pair (a, b): whether either blocks the other, directly or through a list, and
    the blocks themselves (BlockExistence: record uris, list uris for list blocks)."""
    pairs = [(a if args.is_did(a) else "", b if args.is_did(b) else "")
             for a, b in ((p.a, p.b) for p in args.items(req.pairs, "pairs"))]
    refs = dp.block_refs(pairs) if pairs else []
    return bsky_pb2.GetBlockExistenceResponse(
        exists=[any(r.values()) for r in refs],
        blocks=[bsky_pb2.BlockExistence(blocking=r["blocking"], blocked_by=r["blockedBy"],
                                        blocking_by_list=r["blockingByList"], blocked_by_list=r["blockedByList"])
                for r in refs])


@rpc("GetBlocks")
def get_blocks(dp: DataPlaneReader, req: bsky_pb2.GetBlocksRequest) -> bsky_pb2.GetBlocksResponse:
    """The actor's block records, newest first, one per blocked account."""
    actor, limit, cursor = args.did(req.actor_did, "actor_did"), args.limit(req.limit), args.cursor(req.cursor)
    with args.cursor_errors():
        items, next_cursor = dp.out_edges(actor, BLOCK, limit, cursor)
    return bsky_pb2.GetBlocksResponse(block_uris=[item["uri"] for item in items], cursor=next_cursor or "")


@rpc("GetBidirectionalBlock")
def get_bidirectional_block(dp: DataPlaneReader,
                            req: bsky_pb2.GetBidirectionalBlockRequest) -> bsky_pb2.GetBidirectionalBlockResponse:
    """A block record between the two accounts, either way (the actor's first), or ""."""
    actor, target = args.did(req.actor_did, "actor_did"), args.did(req.target_did, "target_did")
    return bsky_pb2.GetBidirectionalBlockResponse(block_uri=dp.bidirectional_block(actor, target))


@rpc("GetBidirectionalBlockViaList")
def get_bidirectional_block_via_list(
        dp: DataPlaneReader,
        req: bsky_pb2.GetBidirectionalBlockViaListRequest) -> bsky_pb2.GetBidirectionalBlockViaListResponse:
    """The list through which one of the two blocks the other (the actor's first), or ""."""
    actor, target = args.did(req.actor_did, "actor_did"), args.did(req.target_did, "target_did")
    return bsky_pb2.GetBidirectionalBlockViaListResponse(list_uri=dp.bidirectional_block_via_list(actor, target))


@rpc("GetBlocklistSubscription")
def get_blocklist_subscription(
        dp: DataPlaneReader,
        req: bsky_pb2.GetBlocklistSubscriptionRequest) -> bsky_pb2.GetBlocklistSubscriptionResponse:
    """The actor's listblock record of the list (the oldest live one if several), or ""."""
    actor, list_uri = args.did(req.actor_did, "actor_did"), args.at_uri(req.list_uri, "list_uri")
    return bsky_pb2.GetBlocklistSubscriptionResponse(listblock_uri=dp.blocklist_subscription(actor, list_uri))


@rpc("GetBlocklistSubscriptions")
def get_blocklist_subscriptions(
        dp: DataPlaneReader,
        req: bsky_pb2.GetBlocklistSubscriptionsRequest) -> bsky_pb2.GetBlocklistSubscriptionsResponse:
    """The live lists the actor blocks, each once, by the actor's listblock of each (its
    oldest live one), newest first (the reference orders by the lists' createdAt)."""
    actor, limit, cursor = args.did(req.actor_did, "actor_did"), args.limit(req.limit), args.cursor(req.cursor)
    with args.cursor_errors():
        uris, next_cursor = dp.blocklist_subscriptions(actor, limit, cursor)
    return bsky_pb2.GetBlocklistSubscriptionsResponse(list_uris=uris, cursor=next_cursor or "")


@rpc("GetCountsForUsers")
def get_counts_for_users(dp: DataPlaneReader,
                         req: bsky_pb2.GetCountsForUsersRequest) -> bsky_pb2.GetCountsForUsersResponse:
    """Per DID: followers and following (accounts, inactive ones too: the reference's
    aggregates count every follow row it keeps, and it keeps an inactive account's records
    until the account is deleted), posts, reposts, lists, feed generators, starter packs
    (records); drafts 0 (drafts are private data smalldp does not hold)."""
    dids = args.dids(req.dids, "dids")
    if not dids:
        return bsky_pb2.GetCountsForUsersResponse()
    counts = dp.counts_for_users(dids, reference=True)
    return bsky_pb2.GetCountsForUsersResponse(
        followers=counts["followers"], following=counts["following"], posts=counts["posts"],
        reposts=counts["reposts"], lists=counts["lists"], feeds=counts["feeds"],
        starter_packs=counts["starterPacks"], drafts=[0] * len(dids))


@rpc("GetActorStarterPacks")
def get_actor_starter_packs(dp: DataPlaneReader,
                            req: bsky_pb2.GetActorStarterPacksRequest) -> bsky_pb2.GetActorStarterPacksResponse:
    """The actor's starter pack records, newest first."""
    actor, limit, cursor = args.did(req.actor_did, "actor_did"), args.limit(req.limit), args.cursor(req.cursor)
    with args.cursor_errors():
        uris, next_cursor = dp.authored(actor, STARTERPACK, limit, cursor)
    return bsky_pb2.GetActorStarterPacksResponse(uris=uris, cursor=next_cursor or "")


@rpc("SearchActors")
def search_actors(dp: DataPlaneReader, req: bsky_pb2.SearchActorsRequest) -> bsky_pb2.SearchActorsResponse:
    """Active accounts whose handle starts with the term (trimmed, a leading "@" dropped,
    case-insensitive), in handle order. The reference matches anywhere in the handle
    (``LIKE %term%``): a substring search is a scan of every account, which smalldp does
    not do; a prefix walks the handle index."""
    term = args.text(req.term, "term").strip().removeprefix("@")
    limit, cursor = args.limit(req.limit), args.cursor(req.cursor)
    with args.cursor_errors():
        dids, next_cursor = dp.search_actors(term, limit, cursor)
    return bsky_pb2.SearchActorsResponse(dids=dids, cursor=next_cursor or "")
