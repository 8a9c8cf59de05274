"""Derived links: the author-side views the DataPlane needs, as links of the record itself.

The backlink index answers "who links to X". An AppView also asks "what did X write"
(author feeds, counts of posts and lists) and "whom does X follow or block" (the follow
set of a timeline, known followers, relationships). Rather than a second index, a record
gets a few extra links at decode time, with paths no real record field can have:

* ``@...`` paths link a record to its own author's DID. Backlinks of (author DID,
  collection, "@") are then the author's records, newest first, with counts for free;
  ``@noreply``, ``@thread``, ``@media`` and ``@video`` are the author-feed filters.
* ``<.subject`` links a follow or block to its subject, but the store files it under
  the *author* with the *subject's* account in the entry (see Writer): the entries of
  (author DID, follow, "<.subject") are the author's follows, and their bitmaps are the
  author's follow set.

They travel with the real links through the forward index, so deletes, updates,
replays and purges treat them exactly like real links.
"""

from __future__ import annotations

from typing import Any

from smalldp.links import is_link

POST = "app.bsky.feed.post"
REPOST = "app.bsky.feed.repost"
FOLLOW = "app.bsky.graph.follow"
BLOCK = "app.bsky.graph.block"
LIST = "app.bsky.graph.list"
LISTITEM = "app.bsky.graph.listitem"
LISTBLOCK = "app.bsky.graph.listblock"
GENERATOR = "app.bsky.feed.generator"
STARTERPACK = "app.bsky.graph.starterpack"
PROFILE = "app.bsky.actor.profile"

AUTHOR = "@"  # every record of the author in the collection
NO_REPLY = "@noreply"  # posts that are not replies
THREAD = "@thread"  # posts that are not replies, or reply in a thread the author started
MEDIA = "@media"  # posts with images (also inside recordWithMedia)
VIDEO = "@video"  # posts with a video (also inside recordWithMedia)
OUT_SUBJECT = "<.subject"  # follows and blocks, filed under the author (see module doc)

AUTHOR_COLLECTIONS = frozenset({POST, REPOST, LIST, LISTBLOCK, GENERATOR, STARTERPACK})
OUT_COLLECTIONS = frozenset({FOLLOW, BLOCK})
DERIVED_COLLECTIONS = AUTHOR_COLLECTIONS | OUT_COLLECTIONS  # derived_links is empty for the others

_IMAGES = "app.bsky.embed.images"
_VIDEO = "app.bsky.embed.video"
_RECORD_WITH_MEDIA = "app.bsky.embed.recordWithMedia"


def is_derived(path: str) -> bool:
    """True for the paths of derived links (never a real record field's path)."""
    return path[:1] in ("@", "<")


def is_reverse(path: str) -> bool:
    """True for derived links filed under the author with the subject in the entry."""
    return path[:1] == "<"


def derived_links(did: str, collection: str, record: dict[str, Any]) -> list[tuple[str, str]]:
    """The derived (path, target) links of a record written by ``did``."""
    if collection in OUT_COLLECTIONS:
        subject = record.get("subject")
        if type(subject) is str and subject.startswith("did:") and is_link(subject):
            return [(OUT_SUBJECT, subject)]
        return []
    if collection not in AUTHOR_COLLECTIONS:
        return []
    links = [(AUTHOR, did)]
    if collection != POST:
        return links
    reply = record.get("reply")
    if not isinstance(reply, dict):
        links.append((NO_REPLY, did))
        links.append((THREAD, did))
    elif _root_uri(reply).startswith(f"at://{did}/"):
        links.append((THREAD, did))
    media = _media_type(record.get("embed"))
    if media == _IMAGES:
        links.append((MEDIA, did))
    elif media == _VIDEO:
        links.append((VIDEO, did))
    return links


def _root_uri(reply: dict[str, Any]) -> str:
    root = reply.get("root")
    uri = root.get("uri") if isinstance(root, dict) else None
    return uri if type(uri) is str else ""


def _media_type(embed: Any) -> str | None:
    """The $type of a post's media: the embed's own, or its media inside recordWithMedia."""
    if not isinstance(embed, dict):
        return None
    kind = embed.get("$type")
    if kind == _RECORD_WITH_MEDIA:
        media = embed.get("media")
        kind = media.get("$type") if isinstance(media, dict) else None
    return kind if kind in (_IMAGES, _VIDEO) else None
