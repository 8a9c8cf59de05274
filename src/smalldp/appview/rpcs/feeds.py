"""bsky.Service's feed RPCs: author feeds, the home timeline, list feeds, threads and an
actor's feed generators, answered by store/dataplane/feeds.py (and base.py).

Feed items carry the post's uri and, when smalldp keeps its body, its cid; a repost
item also the repost record's uri (``repost_cid`` stays "": repost bodies are not kept
by default). A repost whose subject is no at-uri of a record has no item (the
reference's indexer refuses such a record; the AppView cannot hydrate ""). The reference fills uri and repost only, and the AppView reads a missing
cid as "look it up". Newest first is by rkey as a TID (the reference: ``sortAt``); a
cursor comes only when there is more, except that the timeline and list feeds bound the
timeline buckets they read per page (a page cut short carries a cursor).
"""

from __future__ import annotations

from smalldp.appview.proto import bsky_pb2
from smalldp.appview.rpcs import args
from smalldp.appview.rpcs.base import rpc
from smalldp.derived import GENERATOR
from smalldp.store.dataplane import THREAD_LEVELS_MAX, DataPlaneReader

# bsky.proto's FeedType -> the author-feed filter of store/dataplane/feeds.py
FEED_TYPES = {
    bsky_pb2.FEED_TYPE_UNSPECIFIED: "posts_with_replies",
    bsky_pb2.FEED_TYPE_POSTS_AND_AUTHOR_THREADS: "posts_and_author_threads",
    bsky_pb2.FEED_TYPE_POSTS_NO_REPLIES: "posts_no_replies",
    bsky_pb2.FEED_TYPE_POSTS_WITH_MEDIA: "posts_with_media",
    bsky_pb2.FEED_TYPE_POSTS_WITH_VIDEO: "posts_with_video",
}


@rpc("GetAuthorFeed")
def get_author_feed(dp: DataPlaneReader, req: bsky_pb2.GetAuthorFeedRequest) -> bsky_pb2.GetAuthorFeedResponse:
    """The actor's posts and reposts, newest first, filtered by ``feed_type``:
    unspecified (posts, replies, reposts), POSTS_NO_REPLIES (no replies), POSTS_AND_AUTHOR_
    THREADS (replies only in threads the actor started), POSTS_WITH_MEDIA / _VIDEO (posts
    with images / a video, also inside recordWithMedia; no reposts)."""
    actor, limit, cursor = args.did(req.actor_did, "actor_did"), args.limit(req.limit), args.cursor(req.cursor)
    feed_filter = FEED_TYPES.get(req.feed_type)
    if feed_filter is None:
        raise args.invalid("feed_type", f"unknown FeedType {req.feed_type}")
    with args.cursor_errors():
        items, next_cursor = dp.author_feed(actor, limit, cursor, feed_filter)
    return bsky_pb2.GetAuthorFeedResponse(
        items=[bsky_pb2.AuthorFeedItem(uri=i["uri"], cid=i["cid"], repost=i["repost"], repost_cid=i["repostCid"])
               for i in items if i["uri"]],
        cursor=next_cursor or "")


@rpc("GetTimeline")
def get_timeline(dp: DataPlaneReader, req: bsky_pb2.GetTimelineRequest) -> bsky_pb2.GetTimelineResponse:
    """Posts and reposts by the accounts the viewer follows and by the viewer, newest
    first. ``exclude_replies`` / ``_reposts`` / ``_quotes`` are ignored, as the reference
    ignores them (and the AppView never sets them)."""
    viewer, limit, cursor = args.did(req.actor_did, "actor_did"), args.limit(req.limit), args.cursor(req.cursor)
    with args.cursor_errors():
        items, next_cursor = dp.timeline(viewer, limit, cursor)
    return bsky_pb2.GetTimelineResponse(items=_timeline_items(items), cursor=next_cursor or "")


@rpc("GetListFeed")
def get_list_feed(dp: DataPlaneReader, req: bsky_pb2.GetListFeedRequest) -> bsky_pb2.GetListFeedResponse:
    """Posts (no reposts, as the reference) by the list's members, newest first; the
    exclude_* flags are ignored as the reference ignores them."""
    list_uri = args.at_uri(req.list_uri, "list_uri")
    limit, cursor = args.limit(req.limit), args.cursor(req.cursor)
    with args.cursor_errors():
        items, next_cursor = dp.list_feed(list_uri, limit, cursor)
    return bsky_pb2.GetListFeedResponse(items=_timeline_items(items), cursor=next_cursor or "")


def _timeline_items(items: list[dict[str, str]]) -> list[bsky_pb2.TimelineFeedItem]:
    return [bsky_pb2.TimelineFeedItem(uri=i["uri"], cid=i["cid"], repost=i["repost"], repost_cid=i["repostCid"])
            for i in items if i["uri"]]


@rpc("GetThread")
def get_thread(dp: DataPlaneReader, req: bsky_pb2.GetThreadRequest) -> bsky_pb2.GetThreadResponse:
    """The post's ancestors up to ``above`` levels (root-most first), the post, then its
    descendants to ``below`` levels (breadth-first, newest first per parent, at most
    1,000); empty when the post is not live. Levels above THREAD_LEVELS_MAX count as
    that many (an AppView's BSKY_MAX_THREAD_PARENTS passes through); negative ones are
    invalid."""
    post_uri = args.at_uri(req.post_uri, "post_uri")
    levels = []
    for name, value in (("above", req.above), ("below", req.below)):
        if value < 0:
            raise args.invalid(name, f"must be 0 or more, got {value}")
        levels.append(min(value, THREAD_LEVELS_MAX))
    return bsky_pb2.GetThreadResponse(uris=dp.thread(post_uri, levels[0], levels[1]))


@rpc("GetActorFeeds")
def get_actor_feeds(dp: DataPlaneReader, req: bsky_pb2.GetActorFeedsRequest) -> bsky_pb2.GetActorFeedsResponse:
    """The actor's feed generator records, newest first (by rkey; the reference by createdAt)."""
    actor, limit, cursor = args.did(req.actor_did, "actor_did"), args.limit(req.limit), args.cursor(req.cursor)
    with args.cursor_errors():
        uris, next_cursor = dp.authored(actor, GENERATOR, limit, cursor)
    return bsky_pb2.GetActorFeedsResponse(uris=uris, cursor=next_cursor or "")
