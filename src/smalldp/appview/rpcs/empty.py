"""The RPCs for data smalldp does not hold, answered with the well-formed empty result.

These are the plan's "empty" rows (README-dev.md), plus Ping. Each answer has the shape
the reference DataPlane (``@atproto/bsky``'s ``data-plane/server/routes``) gives when it
finds nothing, so the AppView renders as it does for an account with none of it: where
the request has a list, the answer has one entry per item, in order (the AppView indexes
the answer by the request's positions, and asserts the length of some). They run on the
event loop (async handlers): nothing is read from the store.

Answered empty, and why smalldp holds nothing for them:

* **Ping**: ``{}``; the AppView's ``/xrpc/_health`` calls it (503 without an answer).
* **Mutes** (GetActorMutesActor: not muted; GetMutes: no DIDs; GetActorMutesActorViaList:
  no list; GetMutelistSubscription: not subscribed; GetMutelistSubscriptions: no lists;
  GetThreadMutesOnSubjects: ``false`` per root): mutes are private state written through
  the AppView's bsync service, never in a repo, so never on the firehose.
* **GetNotificationPreferences**: an empty NotificationPreferences per DID (the AppView
  asserts one per DID; empty reads as its defaults); preferences are private data.
* **Activity subscriptions** (GetActivitySubscriptionDids: none;
  GetActivitySubscriptionsByActorAndSubjects: per subject the reference's "none" entry:
  the viewer, the namespace, empty key and subject): private data (bsync).
* **Bookmarks** (GetBookmarksByActorAndSubjects: an empty Bookmark per URI;
  GetActorBookmarks: none) and **drafts** (GetActorDrafts: none): private data.
* **Labels** (GetLabels: none): labels come from labelers' own streams
  (``com.atproto.label.subscribeLabels``), which smalldp does not follow.
* **Takedowns** (GetBlobTakedown, GetRecordTakedown, GetActorTakedown: not taken down):
  moderation state of the AppView's operator; an account taken down upstream is already
  hidden by its account status.
* **Curated suggestions** (GetSuggestedFeeds, GetFollowSuggestions, GetSuggestedEntities:
  none): operator-curated tables of the reference.
* **Search** (SearchPosts, SearchStarterPacks, SearchFeedGenerators: none): full-text
  search is not an index smalldp keeps (actor search by handle is the actors family's).
* **Sitemaps** (GetSitemapIndex: a gzipped sitemap index with no entries; GetSitemapPage:
  ``not_found``, as the reference answers a page it does not have). The plan said
  "unimpl"; an empty index is a valid sitemap, where UNIMPLEMENTED makes the AppView's
  ``/external/sitemap/users.xml.gz`` a 500.

Not here: writes and admin RPCs (mutes, takedowns, upstream status, notification seen)
and what the reference does not implement either stay unregistered (UNIMPLEMENTED,
named); GetNotificationSeen / GetUnreadNotificationCount belong with notifications.
"""

from __future__ import annotations

import gzip

from smalldp.appview.proto import bsky_pb2 as pb
from smalldp.appview.rpcs.base import AppViewContext, RpcError, async_rpc

ACTIVITY_SUBSCRIPTION_NAMESPACE = "app.bsky.notification.defs#subjectActivitySubscription"
EMPTY_SITEMAP_INDEX = gzip.compress(
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n</sitemapindex>\n', mtime=0)


@async_rpc("Ping")
async def ping(ctx: AppViewContext, req: pb.PingRequest) -> pb.PingResponse:
    return pb.PingResponse()


# ------------------------------------------------------------------ mutes


@async_rpc("GetActorMutesActor")
async def get_actor_mutes_actor(ctx: AppViewContext, req: pb.GetActorMutesActorRequest) -> pb.GetActorMutesActorResponse:
    return pb.GetActorMutesActorResponse(muted=False)


@async_rpc("GetMutes")
async def get_mutes(ctx: AppViewContext, req: pb.GetMutesRequest) -> pb.GetMutesResponse:
    return pb.GetMutesResponse()


@async_rpc("GetActorMutesActorViaList")
async def get_actor_mutes_actor_via_list(
        ctx: AppViewContext, req: pb.GetActorMutesActorViaListRequest) -> pb.GetActorMutesActorViaListResponse:
    return pb.GetActorMutesActorViaListResponse()


@async_rpc("GetMutelistSubscription")
async def get_mutelist_subscription(
        ctx: AppViewContext, req: pb.GetMutelistSubscriptionRequest) -> pb.GetMutelistSubscriptionResponse:
    return pb.GetMutelistSubscriptionResponse(subscribed=False)


@async_rpc("GetMutelistSubscriptions")
async def get_mutelist_subscriptions(
        ctx: AppViewContext, req: pb.GetMutelistSubscriptionsRequest) -> pb.GetMutelistSubscriptionsResponse:
    return pb.GetMutelistSubscriptionsResponse()


@async_rpc("GetThreadMutesOnSubjects")
async def get_thread_mutes_on_subjects(
        ctx: AppViewContext, req: pb.GetThreadMutesOnSubjectsRequest) -> pb.GetThreadMutesOnSubjectsResponse:
    return pb.GetThreadMutesOnSubjectsResponse(muted=[False] * len(req.thread_roots))


# ------------------------------------------------------------------ private data


@async_rpc("GetNotificationPreferences")
async def get_notification_preferences(
        ctx: AppViewContext, req: pb.GetNotificationPreferencesRequest) -> pb.GetNotificationPreferencesResponse:
    return pb.GetNotificationPreferencesResponse(
        preferences=[pb.NotificationPreferences() for _ in req.dids])


@async_rpc("GetActivitySubscriptionDids")
async def get_activity_subscription_dids(
        ctx: AppViewContext, req: pb.GetActivitySubscriptionDidsRequest) -> pb.GetActivitySubscriptionDidsResponse:
    return pb.GetActivitySubscriptionDidsResponse()


@async_rpc("GetActivitySubscriptionsByActorAndSubjects")
async def get_activity_subscriptions_by_actor_and_subjects(
        ctx: AppViewContext, req: pb.GetActivitySubscriptionsByActorAndSubjectsRequest,
) -> pb.GetActivitySubscriptionsByActorAndSubjectsResponse:
    none = pb.ActivitySubscription(actor_did=req.actor_did, namespace=ACTIVITY_SUBSCRIPTION_NAMESPACE)
    return pb.GetActivitySubscriptionsByActorAndSubjectsResponse(subscriptions=[none] * len(req.subject_dids))


@async_rpc("GetBookmarksByActorAndSubjects")
async def get_bookmarks_by_actor_and_subjects(
        ctx: AppViewContext, req: pb.GetBookmarksByActorAndSubjectsRequest,
) -> pb.GetBookmarksByActorAndSubjectsResponse:
    return pb.GetBookmarksByActorAndSubjectsResponse(bookmarks=[pb.Bookmark() for _ in req.uris])


@async_rpc("GetActorBookmarks")
async def get_actor_bookmarks(ctx: AppViewContext, req: pb.GetActorBookmarksRequest) -> pb.GetActorBookmarksResponse:
    return pb.GetActorBookmarksResponse()


@async_rpc("GetActorDrafts")
async def get_actor_drafts(ctx: AppViewContext, req: pb.GetActorDraftsRequest) -> pb.GetActorDraftsResponse:
    return pb.GetActorDraftsResponse()


# ------------------------------------------------------------------ labels, moderation


@async_rpc("GetLabels")
async def get_labels(ctx: AppViewContext, req: pb.GetLabelsRequest) -> pb.GetLabelsResponse:
    return pb.GetLabelsResponse()


@async_rpc("GetBlobTakedown")
async def get_blob_takedown(ctx: AppViewContext, req: pb.GetBlobTakedownRequest) -> pb.GetBlobTakedownResponse:
    return pb.GetBlobTakedownResponse(taken_down=False)


@async_rpc("GetRecordTakedown")
async def get_record_takedown(ctx: AppViewContext, req: pb.GetRecordTakedownRequest) -> pb.GetRecordTakedownResponse:
    return pb.GetRecordTakedownResponse(taken_down=False)


@async_rpc("GetActorTakedown")
async def get_actor_takedown(ctx: AppViewContext, req: pb.GetActorTakedownRequest) -> pb.GetActorTakedownResponse:
    return pb.GetActorTakedownResponse(taken_down=False)


# ------------------------------------------------------------------ curation, search, sitemaps


@async_rpc("GetSuggestedFeeds")
async def get_suggested_feeds(ctx: AppViewContext, req: pb.GetSuggestedFeedsRequest) -> pb.GetSuggestedFeedsResponse:
    return pb.GetSuggestedFeedsResponse()


@async_rpc("GetFollowSuggestions")
async def get_follow_suggestions(
        ctx: AppViewContext, req: pb.GetFollowSuggestionsRequest) -> pb.GetFollowSuggestionsResponse:
    return pb.GetFollowSuggestionsResponse()


@async_rpc("GetSuggestedEntities")
async def get_suggested_entities(
        ctx: AppViewContext, req: pb.GetSuggestedEntitiesRequest) -> pb.GetSuggestedEntitiesResponse:
    return pb.GetSuggestedEntitiesResponse()


@async_rpc("SearchPosts")
async def search_posts(ctx: AppViewContext, req: pb.SearchPostsRequest) -> pb.SearchPostsResponse:
    return pb.SearchPostsResponse()


@async_rpc("SearchStarterPacks")
async def search_starter_packs(ctx: AppViewContext, req: pb.SearchStarterPacksRequest) -> pb.SearchStarterPacksResponse:
    return pb.SearchStarterPacksResponse()


@async_rpc("SearchFeedGenerators")
async def search_feed_generators(
        ctx: AppViewContext, req: pb.SearchFeedGeneratorsRequest) -> pb.SearchFeedGeneratorsResponse:
    return pb.SearchFeedGeneratorsResponse()


@async_rpc("GetSitemapIndex")
async def get_sitemap_index(ctx: AppViewContext, req: pb.GetSitemapIndexRequest) -> pb.GetSitemapIndexResponse:
    return pb.GetSitemapIndexResponse(sitemap=EMPTY_SITEMAP_INDEX)


@async_rpc("GetSitemapPage")
async def get_sitemap_page(ctx: AppViewContext, req: pb.GetSitemapPageRequest) -> pb.GetSitemapPageResponse:
    raise RpcError("not_found", "Sitemap page not found: smalldp keeps no sitemaps")


EMPTY = ("Ping", "GetActorMutesActor", "GetMutes", "GetActorMutesActorViaList", "GetMutelistSubscription",
         "GetMutelistSubscriptions", "GetThreadMutesOnSubjects", "GetNotificationPreferences",
         "GetActivitySubscriptionDids", "GetActivitySubscriptionsByActorAndSubjects",
         "GetBookmarksByActorAndSubjects", "GetActorBookmarks", "GetActorDrafts", "GetLabels",
         "GetBlobTakedown", "GetRecordTakedown", "GetActorTakedown", "GetSuggestedFeeds",
         "GetFollowSuggestions", "GetSuggestedEntities", "SearchPosts", "SearchStarterPacks",
         "SearchFeedGenerators", "GetSitemapIndex", "GetSitemapPage")
"""Every method this module answers (the tests check it against the registry)."""
