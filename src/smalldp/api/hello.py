"""`GET /` for programs: Constellation's JSON hello, chosen by the Accept header.

Constellation answers `/` (and its other routes) with HTML only when the Accept header
prefers text/html to application/json, else with JSON (its server/acceptable.rs). A
browser's Accept prefers HTML, so it gets the status page (api/status.py); ``curl``
(``*/*``), a missing Accept or ``application/json`` get::

    {"help": "...", "days_indexed": N | null,
     "stats": {"dids", "targetables", "linking_records", "started_at", "other_data": {...}}}

with smalldp's cheapest sources for each figure (none counts anything at request time):

* ``dids``: accounts smalldp holds an ID for, linking or linked (``max(aid)``, the status
  page's "accounts"); Constellation counts only accounts that created links.
* ``targetables``: backlink chunks over all runs, an estimate of (target, collection,
  path) keys: a key in several runs, or with more than 512 links, counts more than once.
* ``linking_records``: live records (the writer's counter), with or without links.
* ``started_at``: time_us of the first event committed (a store made before smalldp
  kept it gets the first event of its next batch); ``days_indexed`` counts from it.
* ``other_data``: ``links`` (live links), ``runs``, ``inactive_accounts``, ``cursor``.
"""

from __future__ import annotations

import re
import time

from aiohttp import web

from smalldp.api.readers import READERS
from smalldp.api.xrpc import json_response

HELP = ("open this URL in a web browser (or request with Accept: text/html) for the status page; "
        "the API is Constellation's (/xrpc/blue.microcosm.links.*, /links*) and smalldp's DataPlane "
        "(/xrpc/dev.smalldp.*), lexicons at /lexicons/")
_AVAILABLE = ("application/json", "text/html")  # in this order: a tie goes to JSON
_QUALITY = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")  # RFC 9110 12.4.2


def prefers_html(accept: str | None) -> bool:
    """True when ``accept`` makes text/html the better of application/json and text/html,
    negotiated as Constellation's Accept parser (the headers-accept crate) does.

    Ranges are ordered most specific first (``type/sub`` > ``type/*`` > ``*/*``), then by
    quality, else as written; each type takes the quality of the first range in that
    order that matches it (0 rules it out). The higher quality wins; at equal quality the
    range met first, and for one range JSON (so ``*/*`` gives JSON). A malformed header is
    no header: JSON. A quality that does not parse counts as 1, as there.
    """
    if not accept:
        return False
    ranges: list[tuple[int, float, int, str, str]] = []  # (-specificity, -quality, position, type, subtype)
    for position, part in enumerate(p for p in accept.split(",")[:64] if p.strip()):
        media, *params = part.split(";")
        kind, slash, sub = media.strip().lower().partition("/")
        if not slash or not kind or not sub:
            return False
        quality, extra = 1.0, 0
        for param in params:
            name, _, value = param.strip().partition("=")
            if name.strip().lower() != "q":
                extra += 1
            elif _QUALITY.fullmatch(value.strip()):
                quality = float(value)
        specificity = (kind != "*") + (sub != "*") + extra
        ranges.append((-specificity, -quality, position, kind, sub))
    ranges.sort(key=lambda r: r[:2])  # stable: equal ranges keep their order

    def rank(media_type: str) -> tuple[float, int] | None:
        kind, _, sub = media_type.partition("/")
        for order, (negative_spec, negative_q, _, r_kind, r_sub) in enumerate(ranges):
            wildcard = r_kind == "*" or (r_kind == kind and r_sub == "*")
            # a range with parameters (besides q) names a variant of a type: only as a wildcard
            exact = (r_kind, r_sub) == (kind, sub) and -negative_spec == 2
            if wildcard or exact:
                return (-negative_q, order) if negative_q < 0 else None
        return None

    json_rank, html_rank = (rank(t) for t in _AVAILABLE)
    if html_rank is None:
        return False
    # higher quality first, then the earlier range; a tie on one range goes to JSON
    return json_rank is None or (html_rank[0], -html_rank[1]) > (json_rank[0], -json_rank[1])


async def hello(request: web.Request) -> web.Response:
    """The JSON hello (see the module doc)."""
    figures = await request.app[READERS].run(lambda r: r.overview())
    started = figures["started_at"]
    days = None if started is None else max(0, int(time.time() - started / 1e6) // 86_400)
    other = {k: figures[k] for k in ("links", "runs", "inactive_accounts", "cursor") if figures[k] is not None}
    return json_response({"help": HELP, "days_indexed": days, "stats": {
        "dids": figures["accounts"], "targetables": figures["blocks"], "linking_records": figures["records"] or 0,
        "started_at": started, "other_data": other}})
