"""bsky.Service's notification RPCs (issue 15, 2D).

* **GetNotifications**: an account's notifications newest first, from the backlink index
  (``store/dataplane/notifications.py`` says what is found, how, and how it differs from
  the reference): follows, likes and reposts of its records, likes and reposts via its
  reposts, replies (its posts' direct replies; replies up to four levels down in threads it
  started), quotes, mentions, starter-pack joins.  ``timestamp`` is the notifying record's
  rkey time (a join: its profile's receive time), ``priority`` whether the account follows
  the author; ``priority`` in the request keeps only those.  The cursor is opaque, and an
  ISO datetime is read as "older than then" (the AppView sends one for the first page).
* **GetNotificationSeen**: no timestamp, for every account: smalldp keeps no seen state
  (``UpdateNotificationSeen`` stays unimplemented: the store's one writer is on the ingest
  side and has no table for it).  The AppView then counts the newest notification of a
  first page as the last one seen.
* **GetUnreadNotificationCount**: 0 (without seen state every notification would count
  for ever, and the app's badge could never be cleared).
"""

from __future__ import annotations


from smalldp.appview.proto import bsky_pb2 as pb
from smalldp.appview.rpcs import args
from smalldp.appview.rpcs.base import AppViewContext, async_rpc, rpc
from smalldp.store.dataplane import DataPlaneReader




@rpc("GetNotifications")
def get_notifications(dp: DataPlaneReader, req: pb.GetNotificationsRequest) -> pb.GetNotificationsResponse:
    """A page of the account's notifications, newest first."""
    actor, limit, cursor = args.did(req.actor_did, "actor_did"), args.limit(req.limit), args.cursor(req.cursor)
    with args.cursor_errors():
        items, next_cursor = dp.notifications(actor, limit, cursor, req.priority)
    return pb.GetNotificationsResponse(notifications=[
        pb.Notification(recipient_did=actor, uri=item.uri, reason=item.reason, reason_subject=item.reason_subject,
                        timestamp=args.timestamp_us(item.time_us), priority=item.priority)
        for item in items], cursor=next_cursor or "")


@async_rpc("GetNotificationSeen")
async def get_notification_seen(ctx: AppViewContext,
                                req: pb.GetNotificationSeenRequest) -> pb.GetNotificationSeenResponse:
    """No timestamp: smalldp keeps no seen state."""
    args.did(req.actor_did, "actor_did")
    return pb.GetNotificationSeenResponse()


@async_rpc("GetUnreadNotificationCount")
async def get_unread_notification_count(
        ctx: AppViewContext, req: pb.GetUnreadNotificationCountRequest) -> pb.GetUnreadNotificationCountResponse:
    """0: without seen state nothing is known to be unread."""
    args.did(req.actor_did, "actor_did")
    return pb.GetUnreadNotificationCountResponse(count=0)
