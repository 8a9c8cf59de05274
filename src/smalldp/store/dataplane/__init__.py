"""The DataPlane queries an AppView asks (lexicons/DATAPLANE.md), as views of the index.

Everything here reads what the writer already keeps: backlink chunks (with their actor
bitmaps) for "who links to X", the derived author and reverse links (smalldp.derived)
for "what did X write / whom does X follow", the forward index for "what does this
record link to", the timeline buckets (store/timeline.py) for home timelines, and the
bodies table for record JSON. Set questions are bitmap intersections of chunk bitmaps
with a follow set; nothing joins.

Every method works in one read transaction (Reader._read) and bounds its work: pages
of at most 100, at most 100 values per array, descendant walks and timeline bucket
scans with fixed caps.

One module per family of methods, each a mixin over the shared plumbing (base.py);
:class:`DataPlaneReader` combines them:

* base.py: request memo, prefetch, tallies and run summaries, walks, pages, cursors
* records.py: getRecords, getActors, getDidsByHandles, getLatestRev
* interactions.py: interaction counts, likes/reposts/quotes by subject or actor, known likers
* graph.py: followers, follows, blocks, relationships, block existence, counts for users
* lists.py: list members, an actor's lists, list membership
* gates.py: whether a reply breaks its thread's gate (post meta, reply counts, notifications)
* feeds.py: author feed, timeline, thread, feed items
* notifications.py: an account's notifications (GetNotifications), identity facts of a DID
"""

from __future__ import annotations

from smalldp.store.dataplane.base import FeedEntry, decode_feed_cursor, encode_feed_cursor
from smalldp.store.dataplane.feeds import (
    FEED_FILTERS,
    THREAD_DESCENDANTS_MAX,
    THREAD_LEVELS_MAX,
    TIMELINE_SEGMENTS_MAX,
    FeedQueries,
)
from smalldp.store.dataplane.graph import LIST_BLOCKS_MAX, GraphQueries
from smalldp.store.dataplane.interactions import LIKE, QUOTE_PATHS, InteractionQueries
from smalldp.store.dataplane.notifications import NotificationQueries
from smalldp.store.dataplane.records import RecordQueries

__all__ = [
    "FEED_FILTERS", "LIKE", "LIST_BLOCKS_MAX", "QUOTE_PATHS", "THREAD_DESCENDANTS_MAX", "THREAD_LEVELS_MAX",
    "TIMELINE_SEGMENTS_MAX",
    "DataPlaneReader", "FeedEntry", "decode_feed_cursor", "encode_feed_cursor",
]


class DataPlaneReader(RecordQueries, InteractionQueries, NotificationQueries, GraphQueries, FeedQueries):
    """A Reader that also answers the DataPlane methods."""
