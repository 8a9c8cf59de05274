"""bsky.Service's interaction RPCs: likes, reposts and quotes of a subject, an actor's
likes and reposts (of given subjects, or all), interaction counts and starter-pack
joins, answered by store/dataplane/interactions.py (and base.py).

As in rpcs/graph.py: newest first means by rkey as a TID (the reference: ``sortAt``),
inactive accounts are invisible (but counted in GetInteractionCounts, as the reference
counts them), one like or repost per account and subject is listed
(its oldest live one: the reference indexes only the first), a cursor comes only when
there is more.
Subjects are matched by uri; their cids are ignored, as the reference ignores them.
"""

from __future__ import annotations

from smalldp.appview.proto import bsky_pb2
from smalldp.appview.rpcs import args
from smalldp.appview.rpcs.base import rpc
from smalldp.derived import POST, REPOST
from smalldp.store.dataplane import LIKE, QUOTE_PATHS, DataPlaneReader


SubjectRequest = (bsky_pb2.GetLikesBySubjectSortedRequest | bsky_pb2.GetLikesBySubjectRequest
                  | bsky_pb2.GetRepostsBySubjectRequest | bsky_pb2.GetQuotesBySubjectSortedRequest)


def _by_subject(dp: DataPlaneReader, req: SubjectRequest, collection: str,
                paths: tuple[str, ...]) -> tuple[list[str], str]:
    """Record uris linking to ``req.subject`` from (collection, any of paths), newest first.
    A request without a subject uri has nothing to list (the reference answers [] too)."""
    limit, cursor = args.limit(req.limit), args.cursor(req.cursor)
    if not req.subject.uri:
        return [], ""
    subject = args.at_uri(req.subject.uri, "subject.uri")
    with args.cursor_errors():
        uris, next_cursor = dp.by_subject(subject, collection, paths, limit, cursor)
    return uris, next_cursor or ""


@rpc("GetLikesBySubjectSorted")
def get_likes_by_subject_sorted(
        dp: DataPlaneReader, req: bsky_pb2.GetLikesBySubjectSortedRequest) -> bsky_pb2.GetLikesBySubjectSortedResponse:
    """Like records of the subject, newest first, one per account."""
    uris, cursor = _by_subject(dp, req, LIKE, (".subject.uri",))
    return bsky_pb2.GetLikesBySubjectSortedResponse(uris=uris, cursor=cursor)


@rpc("GetLikesBySubject")
def get_likes_by_subject(dp: DataPlaneReader,
                         req: bsky_pb2.GetLikesBySubjectRequest) -> bsky_pb2.GetLikesBySubjectResponse:
    """The deprecated name of GetLikesBySubjectSorted (the reference answers it the same)."""
    uris, cursor = _by_subject(dp, req, LIKE, (".subject.uri",))
    return bsky_pb2.GetLikesBySubjectResponse(uris=uris, cursor=cursor)


@rpc("GetRepostsBySubject")
def get_reposts_by_subject(dp: DataPlaneReader,
                           req: bsky_pb2.GetRepostsBySubjectRequest) -> bsky_pb2.GetRepostsBySubjectResponse:
    """Repost records of the subject, newest first, one per account."""
    uris, cursor = _by_subject(dp, req, REPOST, (".subject.uri",))
    return bsky_pb2.GetRepostsBySubjectResponse(uris=uris, cursor=cursor)


@rpc("GetQuotesBySubjectSorted")
def get_quotes_by_subject_sorted(
        dp: DataPlaneReader,
        req: bsky_pb2.GetQuotesBySubjectSortedRequest) -> bsky_pb2.GetQuotesBySubjectSortedResponse:
    """Posts quoting the subject (``.embed.record.uri`` or, with media,
    ``.embed.record.record.uri``), newest first."""
    uris, cursor = _by_subject(dp, req, POST, QUOTE_PATHS)
    return bsky_pb2.GetQuotesBySubjectSortedResponse(uris=uris, cursor=cursor)


@rpc("GetLikesByActorAndSubjects")
def get_likes_by_actor_and_subjects(
        dp: DataPlaneReader,
        req: bsky_pb2.GetLikesByActorAndSubjectsRequest) -> bsky_pb2.GetLikesByActorAndSubjectsResponse:
    """Per ref, the actor's like of it (the oldest live one if several), or ""."""
    actor, subjects = args.did(req.actor_did, "actor_did"), args.ref_uris(req.refs, "refs")
    return bsky_pb2.GetLikesByActorAndSubjectsResponse(
        uris=dp.actor_subjects(actor, LIKE, subjects) if subjects else [])


@rpc("GetRepostsByActorAndSubjects")
def get_reposts_by_actor_and_subjects(
        dp: DataPlaneReader,
        req: bsky_pb2.GetRepostsByActorAndSubjectsRequest) -> bsky_pb2.GetRepostsByActorAndSubjectsResponse:
    """Per ref, the actor's repost of it (the oldest live one if several), or ""."""
    actor, subjects = args.did(req.actor_did, "actor_did"), args.ref_uris(req.refs, "refs")
    return bsky_pb2.GetRepostsByActorAndSubjectsResponse(
        uris=dp.actor_subjects(actor, REPOST, subjects) if subjects else [])


@rpc("GetActorLikes")
def get_actor_likes(dp: DataPlaneReader, req: bsky_pb2.GetActorLikesRequest) -> bsky_pb2.GetActorLikesResponse:
    """The actor's likes, newest first, with what each likes. A bounded walk of the forward
    index (store/dataplane/interactions.py ``actor_likes``): a page may hold fewer likes
    than ``limit``, even none, and still carry a cursor."""
    actor, limit, cursor = args.did(req.actor_did, "actor_did"), args.limit(req.limit), args.cursor(req.cursor)
    with args.cursor_errors():
        likes, next_cursor = dp.actor_likes(actor, limit, cursor)
    return bsky_pb2.GetActorLikesResponse(
        likes=[bsky_pb2.LikeInfo(uri=like["uri"], subject=like["subject"]) for like in likes],
        cursor=next_cursor or "")


@rpc("GetActorReposts")
def get_actor_reposts(dp: DataPlaneReader,
                      req: bsky_pb2.GetActorRepostsRequest) -> bsky_pb2.GetActorRepostsResponse:
    """The actor's repost records, newest first."""
    actor, limit, cursor = args.did(req.actor_did, "actor_did"), args.limit(req.limit), args.cursor(req.cursor)
    with args.cursor_errors():
        uris, next_cursor = dp.authored(actor, REPOST, limit, cursor)
    return bsky_pb2.GetActorRepostsResponse(uris=uris, cursor=next_cursor or "")


@rpc("GetInteractionCounts")
def get_interaction_counts(dp: DataPlaneReader,
                           req: bsky_pb2.GetInteractionCountsRequest) -> bsky_pb2.GetInteractionCountsResponse:
    """Per ref: likes and reposts (accounts), replies and quotes (records), as the
    reference's aggregates count them: inactive accounts' records too (the reference keeps
    them until the account is deleted), replies that break their thread's gate not
    (store/dataplane/gates.py); bookmarks 0 (bookmarks are private data smalldp does not
    hold). ``skip_cache_for_dids`` is moot: nothing is cached across requests."""
    uris = args.ref_uris(req.refs, "refs")
    if not uris:
        return bsky_pb2.GetInteractionCountsResponse()
    counts = dp.interaction_counts(uris, reference=True)
    return bsky_pb2.GetInteractionCountsResponse(likes=counts["likes"], reposts=counts["reposts"],
                                                 replies=counts["replies"], quotes=counts["quotes"],
                                                 bookmarks=[0] * len(uris))


@rpc("GetStarterPackCounts")
def get_starter_pack_counts(dp: DataPlaneReader,
                            req: bsky_pb2.GetStarterPackCountsRequest) -> bsky_pb2.GetStarterPackCountsResponse:
    """Per ref: profiles that name the starter pack as the one they joined through, all
    time and those created in the last seven days."""
    uris = args.ref_uris(req.refs, "refs")
    if not uris:
        return bsky_pb2.GetStarterPackCountsResponse()
    all_time, week = dp.starter_pack_counts(uris)
    return bsky_pb2.GetStarterPackCountsResponse(joined_all_time=all_time, joined_week=week)
