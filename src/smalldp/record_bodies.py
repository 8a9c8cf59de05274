"""Which collections' record bodies the store keeps unless ``body_collections`` says otherwise.

One list for the setting's default (config.py) and the Writer's (store/writer.py), so
`smalldp import`, `smalldp serve` and code that opens a Writer directly keep the same ones.

What the official AppView reads as records (bsky.Service's Get*Records and GetActors).
Likes, reposts and follows (which its main views hydrate), blocks, list items and list
blocks are kept in store/bodies.py's compact codec (README: "Record storage for the
AppView" has what that costs); the accounts' self records after them are one per account
at most.
"""

from __future__ import annotations

DEFAULT_BODY_COLLECTIONS: tuple[str, ...] = (
    "app.bsky.feed.post", "app.bsky.actor.profile", "app.bsky.graph.list",
    "app.bsky.feed.generator", "app.bsky.graph.starterpack", "app.bsky.feed.threadgate",
    "app.bsky.feed.postgate", "app.bsky.labeler.service",
    "app.bsky.feed.like", "app.bsky.feed.repost", "app.bsky.graph.follow", "app.bsky.graph.block",
    "app.bsky.graph.listitem", "app.bsky.graph.listblock",
    "app.bsky.actor.status", "chat.bsky.actor.declaration", "app.bsky.notification.declaration",
    "com.germnetwork.declaration", "app.bsky.graph.verification",
)
