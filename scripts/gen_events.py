#!/usr/bin/env python3
"""Seeded, deterministic generator of realistic Bluesky Jetstream v1 JSONL events.

Usage::

    gen_events.py --events N [--seed S] [--out PATH] [--start-time-us T]
                  [--rate EVENTS_PER_S] [--accounts A] [--dataplane] [--stats]

One JSON object per line, shaped like production Jetstream v1 (``kind`` commit /
identity / account).  ``--out`` defaults to stdout; a path ending in ``.zst`` is
written zstd-compressed.  The same arguments give byte-identical output.

From Python::

    from gen_events import generate
    for line in generate(1_000_000, seed=7, rate=2000.0):   # bytes, no newline
        ...

Every parameter, its default and where the value comes from is documented in
``GENERATOR.md`` next to this file.  Only the standard library, ``orjson`` and
(for ``.zst`` output) ``zstandard`` are used.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from array import array
from functools import lru_cache
from itertools import islice
from random import Random
from typing import Any, Iterator

import orjson

__all__ = ["generate", "EventGenerator", "DEFAULTS", "DEFAULT_MIX", "did_of", "celebrity_dids", "viewer_dids",
           "mega_did", "list_owner_dids", "main"]

# --------------------------------------------------------------------------------------
# Parameters (see GENERATOR.md for the source of every value)
# --------------------------------------------------------------------------------------

DEFAULTS: dict[str, Any] = {
    "start_time_us": 1783175888000000,  # first time_us; the real capture starts at ...888085434
    "rate": 500.0,  # events/s of the time_us clock; the capture: 152 events in 318 ms (~480/s)
    "accounts": None,  # None -> max(1000, n_events // 10)
    "seq_start": 31527015322,  # relay seq of the first event (the capture's seq_first)
    "relay_lag_us": 500000,  # time_us - rev time; capture median 504 ms (p25 473, p75 582)
    "reorder_max_us": 35000,  # max time_us step back; capture max 32.8 ms, hard cap 50 ms
    "activity_s": 0.9,  # Zipf-Mandelbrot exponent of account activity
    "activity_q": 10.0,  # ... and its offset (caps the busiest account's share)
    "popularity_s": 1.05,  # Zipf-Mandelbrot exponent of follow-target popularity
    "popularity_q": 3.0,
    "celebrities": None,  # None -> clamp(A // 2000, 10, 1000) accounts of top popularity
    "reply_frac": 0.40,  # posts that are replies
    "via_frac": 0.20,  # likes/reposts with a `via` repost (capture: 24 of 120)
    "old_subject_frac": 0.10,  # likes/reposts/quotes of posts created before the stream
    "hot_post_prob": 0.00025,  # posts that are a celebrity's viral post
    "hot_like_frac": 0.06,  # likes/reposts that go to the current viral posts
    "popular_like_frac": 0.24,  # likes/reposts that go to posts by popular authors
    "handle_frac": 0.80,  # identity events carrying a handle (the capture's 2 have none)
    "post_window": 200000,  # recent posts remembered for replies/likes/deletes
    "record_window": 100000,  # recent likes/follows/reposts/other records remembered
    "mix": None,  # dict overriding entries of DEFAULT_MIX
    # ---- scripted accounts for the DataPlane benchmark (off unless dataplane=True; GENERATOR.md) ----
    "dataplane": False,  # add the viewers, the mega account, big lists and long threads below
    "viewers": 4,  # viewer accounts: follow exactly `viewer_follows` active posters each, nothing else
    "viewer_follows": 1000,
    "viewer_window": None,  # None -> 25 * viewers * viewer_follows events hold the viewers' follows
    "mega_followers": 120000,  # scripted follows of the mega account, from distinct accounts
    "mega_span": 9600000,  # ... spread evenly over the first mega_span events
    "big_lists": 4,  # big lists (even: modlists, odd: curatelists), one listitem each every ...
    "big_list_every": 2000,  # ... this many events
    "thread_every": 50000,  # a long reply chain (a conversation) starts every this many events
    "thread_depth": 40,  # replies in each chain
}

# Share of all events, in percent (normalised by their sum).  Sources: GENERATOR.md.
DEFAULT_MIX: dict[str, float] = {
    "like": 57.5,
    "post": 12.0,
    "follow": 11.0,
    "repost": 9.0,
    "block": 1.2,
    "profile": 1.2,
    "listitem": 1.0,
    "list": 0.3,
    "listblock": 0.3,
    "star": 0.4,  # sh.tangled.feed.star
    "play": 0.9,  # fm.teal.alpha.feed.play
    "threadgate": 0.6,
    "postgate": 0.25,
    "declaration": 0.25,  # chat.bsky.actor.declaration
    "bookmark": 0.4,  # com.example.bookmark
    "tealstatus": 0.2,  # fm.teal.alpha.actor.status (rkey self)
    "update_bookmark": 0.25,
    "update_post": 0.15,
    "update_other": 0.10,  # list renames, threadgate edits
    "delete": 2.9,
    "delete_unknown": 0.1,
    # the two non-commit kinds
    "identity": 0.3,
    "account": 0.3,
}

S32 = "234567abcdefghijklmnopqrstuvwxyz"  # base32-sortable (TIDs)
B32 = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 lowercase (DIDs, CIDs)

_T3 = [S32[i >> 10] + S32[(i >> 5) & 31] + S32[i & 31] for i in range(32768)]
_MS3 = [f".{i:03d}Z" for i in range(1000)]

# Account index == activity rank (0 is the busiest account): DIDs are random per index anyway, and
# keeping the busy accounts together keeps the per-account arrays cache-friendly.
_PP, _OP = 2246822519, 91997  # popularity-rank -> account bijection

# statuses in the per-account status byte
_ACTIVE, _DEACTIVATED, _TAKENDOWN, _SUSPENDED, _DELETED = 0, 1, 2, 3, 4
_SCRIPTED = 5  # a viewer (dataplane=True): active, but never picked for a random op
_PP2, _OP2 = 2654435761, 40503  # a second bijection (mega followers, big-list members)

C_LIKE = "app.bsky.feed.like"
C_POST = "app.bsky.feed.post"
C_REPOST = "app.bsky.feed.repost"
C_FOLLOW = "app.bsky.graph.follow"
C_BLOCK = "app.bsky.graph.block"
C_LIST = "app.bsky.graph.list"
C_LISTITEM = "app.bsky.graph.listitem"
C_LISTBLOCK = "app.bsky.graph.listblock"
C_PROFILE = "app.bsky.actor.profile"
C_STAR = "sh.tangled.feed.star"
C_PLAY = "fm.teal.alpha.feed.play"
C_TEALSTATUS = "fm.teal.alpha.actor.status"
C_THREADGATE = "app.bsky.feed.threadgate"
C_POSTGATE = "app.bsky.feed.postgate"
C_DECL = "chat.bsky.actor.declaration"
C_BOOKMARK = "com.example.bookmark"


def _tid_slow(v: int) -> str:
    out = []
    for _ in range(13):
        out.append(S32[v & 31])
        v >>= 5
    return "".join(reversed(out))


def _b32_table(alphabet: str, mask: int = 31) -> bytes:
    return bytes(ord(alphabet[b & mask]) for b in range(256))


_TR32 = _b32_table(B32)
_TR_FIRST = bytes(ord(B32[b & 7]) for b in range(256))  # a..h: 2 zero bits + 3 digest bits
_TR_LAST = bytes(ord(B32[(b & 7) << 2]) for b in range(256))  # a e i m q u y 4: 3 bits + 2 pad


@lru_cache(maxsize=4)
def _universe(n_accounts: int, n_celebs: int) -> dict[str, Any]:
    """The account universe: depends only on the account count, never on the seed.

    Account ``i`` always has the same DID whatever ``--seed`` or ``--accounts`` is
    (prefix-stable random streams), so DIDs can be recomputed by a benchmark.
    """
    A = n_accounts
    raw = Random("smalldp-gen-dids").randbytes(24 * A).translate(_TR32)
    blob = bytearray(32 * A)
    for k, ch in enumerate(b"did:plc:"):
        blob[k::32] = bytes((ch,)) * A
    for k in range(24):
        blob[8 + k :: 32] = raw[k::24]
    webflag = Random("smalldp-gen-web").randbytes(A)
    web: dict[int, str] = {}
    # ~2% (5/256) of accounts are did:web, with a 24-char host so every DID is 32 chars
    for marker in (b"\x00", b"\x01", b"\x02", b"\x03", b"\x04"):
        pos = webflag.find(marker)
        while pos >= 0:
            web[pos] = f"did:web:{_name(pos)[:4]}{pos:08x}.example.com"
            pos = webflag.find(marker, pos + 1)
    web = dict(sorted(web.items()))
    for i, w in web.items():
        blob[i << 5 : (i << 5) + 32] = w.encode()
    didblob = blob.decode("ascii")  # account i's DID is didblob[32 i : 32 i + 32]
    del blob, raw
    clk = Random("smalldp-gen-clock").randbytes(A).translate(bytes(b & 31 for b in range(256)))
    rkd = Random("smalldp-gen-rkey-delay").randbytes(A)
    pop = bytearray(A)  # 1 = popular author (top 1% of popularity), 2 = celebrity
    n_pop = max(n_celebs, A // 100)
    for r in range(n_pop):
        pop[(r * _PP + _OP) % A] = 1
    celebs = [(r * _PP + _OP) % A for r in range(n_celebs)]
    for a in celebs:
        pop[a] = 2
    return {"didblob": didblob, "web": web, "clk": clk, "rkd": rkd, "pop": bytes(pop), "celebs": celebs}


_SYL = ("ka", "mi", "ra", "to", "ne", "lu", "so", "vi", "da", "el", "no", "ri", "sa", "ta", "mo", "jun",
        "ben", "ash", "kai", "lee", "zo", "fi", "an", "or", "yu", "ha", "el", "be", "ca", "wen", "ix", "ok")


def _name(i: int) -> str:
    h = (i * 2654435761) & 0xFFFFFFFF
    return _SYL[h & 31] + _SYL[(h >> 5) & 31] + _SYL[(h >> 10) & 31]


def _n_celebs(A: int, explicit: int | None) -> int:
    return explicit if explicit is not None else max(10, min(1000, A // 2000))


def did_of(index: int, accounts: int) -> str:
    """The DID of account ``index`` in a universe of ``accounts`` accounts."""
    u = _universe(accounts, _n_celebs(accounts, None))
    return u["didblob"][index << 5 : (index << 5) + 32]


def celebrity_dids(accounts: int) -> list[str]:
    """DIDs of the celebrity accounts (most popular follow targets, authors of viral posts)."""
    u = _universe(accounts, _n_celebs(accounts, None))
    return [did_of(a, accounts) for a in u["celebs"]]


def _pop_rank(a: int, A: int) -> int | None:
    """Popularity rank of account ``a`` (inverse of the rank -> account bijection), or None."""
    try:
        return ((a - _OP) * pow(_PP, -1, A)) % A
    except ValueError:  # _PP not invertible mod A (A a multiple of the prime _PP): unknown
        return None


@lru_cache(maxsize=8)
def _special(A: int, n_viewers: int = 4, n_lists: int = 4) -> dict[str, Any]:
    """Account indices of the scripted DataPlane accounts; they depend only on the counts.

    * mega: the first account from activity rank 100 on that is in the bottom half of the
      popularity order (so natural follows of it are rare: its followers are scripted);
    * viewers: from the least active account backwards, accounts that are not popular;
    * list owners: from activity rank 300 on, not popular.
    """
    pop = _universe(A, _n_celebs(A, None))["pop"]
    mega = -1
    for a in range(min(100, A // 4), A):
        r = _pop_rank(a, A)
        if not pop[a] and (r is None or r >= A // 2):
            mega = a
            break
    viewers: list[int] = []
    a = A - 1
    while len(viewers) < n_viewers and a > 0:
        if not pop[a] and a != mega:
            viewers.append(a)
        a -= 1
    owners: list[int] = []
    a = min(300, A // 3)
    while len(owners) < n_lists and a < A:
        if not pop[a] and a != mega and a not in viewers:
            owners.append(a)
        a += 1
    return {"mega": mega, "viewers": viewers, "owners": owners}


def viewer_dids(accounts: int, viewers: int = 4) -> list[str]:
    """DIDs of the viewer accounts of a ``dataplane=True`` stream (each follows exactly
    ``viewer_follows`` active accounts that post; viewer 0 shares the most followees with
    the mega account's followers, see GENERATOR.md)."""
    return [did_of(a, accounts) for a in _special(accounts, viewers)["viewers"]]


def mega_did(accounts: int) -> str:
    """DID of the mega account of a ``dataplane=True`` stream (``mega_followers`` scripted followers)."""
    return did_of(_special(accounts)["mega"], accounts)


def list_owner_dids(accounts: int, big_lists: int = 4) -> list[str]:
    """DIDs of the owners of the big lists of a ``dataplane=True`` stream (list j's owner at j)."""
    return [did_of(a, accounts) for a in _special(accounts, 4, big_lists)["owners"]]


def _dataplane_script(cfg: dict[str, Any], A: int, n: int,
                      seed: int) -> tuple[list[tuple[int, int, str, Any]], list[int], list[int], list[int], list[int]]:
    """The scripted actions of a ``dataplane=True`` stream, sorted by event index.

    Returns (script, mega_queue, followee_pool, protected accounts, viewer accounts).
    Choices come from their own seeded RNG; indices depend on the parameters, not on ``n``
    (only actions at indices below ``n`` are listed), so prefixes stay prefixes.
    """
    V, F, L = int(cfg["viewers"]), int(cfg["viewer_follows"]), int(cfg["big_lists"])
    spec = _special(A, V, L)
    mega, viewers, owners = spec["mega"], spec["viewers"], spec["owners"]
    if mega < 0 or len(viewers) < V or len(owners) < L:
        raise ValueError("too few accounts for the scripted DataPlane accounts")
    reserved = set(viewers) | {mega}
    F = min(F, (A - len(reserved)) // 4)  # tiny universes: fewer follows per viewer
    pool = [a for a in range(A) if a not in reserved][: 3 * F]  # the most active accounts
    rng = Random(f"smalldp-gen-dataplane-{seed}")
    follows = [rng.sample(pool, F) for _ in viewers]
    window = int(cfg["viewer_window"] or 25 * V * F)
    step = max(1, window // max(1, V * F))
    out: list[tuple[int, int, str, Any]] = []

    def add(i: int, act: str, arg: Any) -> None:
        if i < n:
            out.append((i, len(out), act, arg))

    specials = [mega, *viewers, *owners]
    for k, a in enumerate(specials):  # handles and profiles of the scripted accounts
        add(1 + 2 * k, "identity", a)
        add(2 + 2 * k, "profile", a)
    for j in range(L):
        add(60 + j, "biglist", j)
    for v, a in enumerate(viewers):
        for j in range(0, L, 2):  # viewer 0 blocks every modlist, the others one of them
            if v == 0 or (j // 2) % 2 == v % 2:
                add(200 + 10 * v + j, "vlistblock", (a, j))
    base = 100
    for j in range(F):
        for v, a in enumerate(viewers):
            i = base + (j * V + v) * step
            b = follows[v][j]
            add(i, "vfollow", (a, b))
            if rng.random() < 0.1:  # followed back
                add(i + 7, "followback", (b, a))
    for v, a in enumerate(viewers):
        mine = set(follows[v])
        for _ in range(25):
            b = rng.randrange(A)
            if b not in reserved and b not in mine:
                add(base + step * rng.randrange(V * F) + 3, "vblock", (a, b))
    for v, a in enumerate(viewers):
        i = 120000 + 5000 * v
        while i < n:
            add(i, "vpost", a)
            i += 20000
    M = int(cfg["mega_followers"])
    if M > 0:
        mstep = max(1, int(cfg["mega_span"]) // M)
        for k in range(min(M, max(0, (n - 1000) // mstep + 1))):
            add(1000 + k * mstep, "mfollow", None)
    every = int(cfg["big_list_every"])
    for j in range(L):
        i = 500 + j * max(1, every // L)
        while i < n:
            add(i, "listitem", j)
            i += every
    te, depth = int(cfg["thread_every"]), int(cfg["thread_depth"])
    th = 0
    while 30000 + th * te < n:
        s0 = 30000 + th * te
        for j in range(depth + 1):
            add(s0 + 50 * j, "thread", (th, j))
        th += 1
    out.sort()
    # who follows the mega account first: viewer 0's followees all, viewer 1's half,
    # viewer 2's tenth, viewer 3's none (round-robin, each account once)
    shares = [1.0, 0.5, 0.1] + [0.0] * max(0, V - 3)
    take = [follows[v][: int(F * shares[v])] for v in range(V)]
    queue: list[int] = []
    seen: set[int] = set()
    for j in range(F):
        for v in range(V):
            if j < len(take[v]) and take[v][j] not in seen:
                seen.add(take[v][j])
                queue.append(take[v][j])
    followees = sorted({b for f in follows for b in f})
    return out, queue, followees, [mega, *owners, *followees], list(viewers)


# --------------------------------------------------------------------------------------
# Content pools (built from the seeded RNG once per generator)
# --------------------------------------------------------------------------------------

_WORDS = {
    "en": ("the a and to of in is it that for you this on with my just so not be have but are was "
           "what about like all your if at one can they get out today new people time good really "
           "think know more now how when some would been day going love see still because need "
           "make right thing great back post first very much world news why here want also better "
           "never every year over well work game music book film show night week morning coffee "
           "cat dog weather election city team season thread update art photo story sky friends "
           "home weekend long little big best last old free open together everyone something "
           "tonight tomorrow again already finally maybe honestly literally probably").split(),
    "pt": "eu você não que para com uma hoje muito bom dia gente amo isso mais tudo aqui agora vida "
          "obrigado quando sempre nunca casa trabalho noite".split(),
    "es": "hoy que para con una muy bien gracias todo esto más vida ahora siempre nunca casa trabajo "
          "noche mundo gente amigos mañana".split(),
    "de": "ich und die der das ist nicht mit auf heute sehr gut danke alles noch mehr leben jetzt "
          "immer nie haus arbeit nacht welt leute morgen".split(),
    "fr": "je et le la les est pas avec sur aujourd'hui très bien merci tout encore plus vie "
          "maintenant toujours jamais maison travail nuit monde gens demain".split(),
    "tr": "bugün çok güzel teşekkürler her şey daha hayat şimdi her zaman asla ev iş gece dünya "
          "insanlar yarın".split(),
    "ru": "сегодня очень хорошо спасибо всё ещё больше жизнь сейчас всегда никогда дом работа "
          "ночь мир люди завтра".split(),
}
_JA = ("今日は", "とても", "楽しかった", "ありがとう", "待って", "観ようと思ってた", "知らなかった",
       "よかった", "本当に", "新しい", "仕事", "猫", "ゲーム", "ラーメン", "映画", "雨", "眠い", "最高",
       "配信", "明日", "絵を描いた", "推し", "かわいい", "感動した", "ライブ", "お疲れ様", "朝ごはん")
_KO = ("오늘", "정말", "좋아요", "감사합니다", "이쁘시네용", "내일", "게임", "고양이", "커피", "음악",
       "영화", "비", "최고", "일", "사진", "친구들")
_EMOJI = ("😂", "🔥", "💦", "❤️", "✨", "🙏", "😭", "👀", "🎉", "🥲", "😍", "👇", "💙", "🦋")
_LANGS = (  # (langs value, weight) -- None: no langs field
    (["en"], 52.0), (["ja"], 14.0), (["pt"], 8.0), (["de"], 4.0), (["es"], 4.0), (["fr"], 3.0),
    (["ko"], 2.0), (["tr"], 1.0), (["ru"], 1.0), (["en", "ja"], 1.0), (["es", "en"], 1.0),
    (["en-US", "en"], 1.0), (None, 7.0),
)
_DOMAINS = (
    ("www.youtube.com", 14), ("youtu.be", 6), ("www.nytimes.com", 4), ("www.theguardian.com", 4),
    ("github.com", 4), ("en.wikipedia.org", 3), ("www.washingtonpost.com", 3), ("bsky.app", 5),
    ("www.instagram.com", 2), ("www.twitch.tv", 3), ("open.spotify.com", 3), ("www.reddit.com", 2),
    ("substack.com", 3), ("www.bbc.co.uk", 3), ("apnews.com", 3), ("www.reuters.com", 3),
    ("www.tumblr.com", 2), ("www.404media.co", 1), ("arstechnica.com", 2), ("www.theverge.com", 2),
    ("www.patreon.com", 2), ("ko-fi.com", 2), ("www.etsy.com", 1), ("denikn.cz", 1),
    ("www.spiegel.de", 1), ("www.lemonde.fr", 1), ("g1.globo.com", 2), ("www.nhk.or.jp", 1),
    ("note.com", 1), ("www.pixiv.net", 2), ("static.klipy.com", 2), ("media.tenor.com", 3),
    ("www.ufofeed.com", 1), ("example.org", 1),
)
_TAGS = ("art", "photography", "bluesky", "news", "music", "gaming", "books", "writing", "ttrpg",
         "science", "politics", "javascript", "python", "rust", "atproto", "cats", "dogs", "birds",
         "nature", "film", "anime", "fanart", "vtuber", "indiedev", "gamedev", "history", "space",
         "football", "f1", "baseball", "nba", "food", "cooking", "gardening", "knitting", "poetry",
         "IndieRebellion", "HowToTellAiToShutUp", "talesatwonderworld", "mastodon", "linux")
_ARTISTS = ("Dianna Lopez", "Radiohead", "Hikaru Utada", "Caetano Veloso", "Björk", "Kendrick Lamar",
            "Aphex Twin", "Mitski", "Daft Punk", "Fela Kuti", "Taylor Swift", "YOASOBI", "Boards of Canada",
            "Beyoncé", "Nina Simone", "Charli xcx", "King Gizzard & The Lizard Wizard", "Arca")
_AGENTS = ("multi-scrobbler/0.14.1", "piper/0.0.9", "teal-scrobbler/1.2.0", "rocksky/0.3.1")
_LIST_PURPOSES = (("app.bsky.graph.defs#modlist", 0.5), ("app.bsky.graph.defs#curatelist", 0.4),
                  ("app.bsky.graph.defs#referencelist", 0.1))


class _Pools:
    """Seeded content pools: CID chunks, texts, URLs, pre-stream posts."""

    def __init__(self, rng: Random) -> None:
        n = 1 << 16
        first = rng.randbytes(n).translate(_TR_FIRST).decode()
        body = rng.randbytes(n * 16).translate(_TR32).decode()
        self.cid_a = [first[i] + body[i * 16 : i * 16 + 16] for i in range(n)]  # 17 chars
        body = rng.randbytes(n * 17).translate(_TR32).decode()
        self.cid_b = [body[i * 17 : i * 17 + 17] for i in range(n)]  # 17 chars
        body = rng.randbytes(n * 17).translate(_TR32).decode()
        last = rng.randbytes(n).translate(_TR_LAST).decode()
        self.cid_c = [body[i * 17 : i * 17 + 17] + last[i] for i in range(n)]  # 18 chars

        rnd = rng.random
        self.texts: list[tuple[str, int, list[str] | None]] = []
        lang_cum = _cumulative([w for _, w in _LANGS])
        for _ in range(4096):
            langs = _LANGS[_pick_cum(lang_cum, rnd())][0]
            text = _make_text(rng, langs[0] if langs else "en")
            self.texts.append((text, len(text.encode()), langs))

        dom_cum = _cumulative([w for _, w in _DOMAINS])
        self.urls: list[str] = []
        for i in range(20000):
            dom = _DOMAINS[_pick_cum(dom_cum, rnd())][0]
            slug = rng.randbytes(9).translate(_TR32).decode()
            if dom == "www.youtube.com":
                url = f"https://{dom}/watch?v={slug[:8].upper()[:4]}{slug[4:8]}-{slug[8]}x"
            elif dom == "bsky.app":
                url = f"https://{dom}/profile/{_name(i)}.bsky.social/post/3m{slug}ab"
            elif dom == "github.com":
                url = f"https://{dom}/{_name(i)}/{slug[:6]}"
            elif dom == "media.tenor.com":
                url = f"https://{dom}/{slug}AAAAC/{_name(i)}-gif.gif?hh=498&ww=498"
            else:
                url = f"https://{dom}/{2020 + i % 7}/{slug[:5]}/{'-'.join(rng.choice(_WORDS['en']) for _ in range(4))}"
            self.urls.append(url)
        self.titles = [_make_text(rng, "en", short=True) for _ in range(1024)]


def _cumulative(weights: list[float]) -> list[float]:
    total = float(sum(weights))
    acc, out = 0.0, []
    for w in weights:
        acc += w / total
        out.append(acc)
    out[-1] = 1.0
    return out


def _pick_cum(cum: list[float], u: float) -> int:
    for i, c in enumerate(cum):
        if u < c:
            return i
    return len(cum) - 1


def _make_text(rng: Random, lang: str, short: bool = False) -> str:
    rnd = rng.random
    u = rnd()
    n_words = 3 + int(u * u * (8 if short else 45))
    if lang == "ja":
        text = "".join(rng.choice(_JA) for _ in range(max(2, n_words // 2)))
    elif lang == "ko":
        text = " ".join(rng.choice(_KO) for _ in range(max(2, n_words // 2)))
    else:
        words = _WORDS.get(lang, _WORDS["en"])
        text = " ".join(rng.choice(words) for _ in range(n_words))
        text = text[0].upper() + text[1:]
        if not short and rnd() < 0.5:
            text += "." if rnd() < 0.6 else ("!" if rnd() < 0.5 else "?")
    if not short and rnd() < 0.15:
        text += " " + rng.choice(_EMOJI)
    return text


# --------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------


class EventGenerator:
    """Iterable of Jetstream v1 JSON lines (bytes, no newline).  ``stats`` fills as it runs."""

    def __init__(self, n_events: int, seed: int = 1, **params: Any) -> None:
        unknown = set(params) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown generator parameters: {sorted(unknown)}")
        cfg = dict(DEFAULTS)
        cfg.update({k: v for k, v in params.items()})
        if cfg["accounts"] is None:
            cfg["accounts"] = max(1000, n_events // 10)
        if cfg["start_time_us"] is None:
            cfg["start_time_us"] = DEFAULTS["start_time_us"]
        if cfg["rate"] is None:
            cfg["rate"] = DEFAULTS["rate"]
        if not 0 <= cfg["reorder_max_us"] <= 50000:
            raise ValueError("reorder_max_us must be within 0..50000")
        if cfg["accounts"] < 20:
            raise ValueError("need at least 20 accounts")
        mix = dict(DEFAULT_MIX)
        if cfg["mix"]:
            bad = set(cfg["mix"]) - set(DEFAULT_MIX)
            if bad:
                raise ValueError(f"unknown mix entries: {sorted(bad)}")
            mix.update(cfg["mix"])
        self.n_events = int(n_events)
        self.seed = int(seed)
        self.cfg = cfg
        self.mix = mix
        self.stats: dict[str, Any] = {}

    def __iter__(self) -> Iterator[bytes]:
        return _run(self)


def generate(n_events: int, seed: int = 1, **params: Any) -> Iterator[bytes]:
    """Yield ``n_events`` Jetstream v1 JSON lines (bytes without newline), deterministically."""
    return iter(EventGenerator(n_events, seed, **params))


class _Memo(dict):
    """A dict that computes missing entries (``d[k]`` is one C-level lookup when cached)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def __missing__(self, key: int) -> str:
        value = self[key] = self.fn(key)
        return value


def _iso_second(s: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s))


def _ref(cid: str, uri: str) -> str:
    """A strong ref, pre-serialised: ``{"cid":...,"uri":...}`` (keys sorted, as the network has them)."""
    return f'{{"cid":"{cid}","uri":"{uri}"}}'


def _ref_uri(ref: str) -> str:
    return ref[76:-2]  # '{"cid":"' + 59-char cid + '","uri":"' ... '"}'


def _run(gen: EventGenerator) -> Iterator[bytes]:  # noqa: C901 - one hot loop, locals on purpose
    n = gen.n_events
    cfg = gen.cfg
    A = int(cfg["accounts"])
    n_celebs = _n_celebs(A, cfg["celebrities"])
    uni = _universe(A, n_celebs)
    DB = uni["didblob"]
    WEB = uni["web"]
    CLK = uni["clk"]
    RKD = uni["rkd"]
    POP = uni["pop"]
    CELEBS = uni["celebs"]

    rng = Random(gen.seed)
    rnd = rng.random
    bits = rng.getrandbits
    pools = _Pools(rng)
    CA, CB, CC = pools.cid_a, pools.cid_b, pools.cid_c
    TEXTS = pools.texts
    NTEXT = len(TEXTS)
    URLS = pools.urls
    NURL = len(URLS)
    TITLES = pools.titles
    dumps = orjson.dumps
    F = orjson.Fragment
    T3 = _T3
    MS3 = _MS3
    HI = _Memo(lambda h: _tid_slow(h << 30)[:7])  # top 7 TID chars by v >> 30 (~1 s of time)
    ISOS = _Memo(_iso_second)

    # ---- per-account state (a few bytes per account) ----
    LREV = array("q", bytes(8 * A))  # last rev (TID integer) per account
    STATUS = bytearray(A)
    # 1 profile exists, 2 chat declaration exists, 4 teal status exists, 8 never deactivated
    # (scripted DataPlane accounts), 16 has posted, 32 follows the mega account (scripted)
    FLAGS = bytearray(A)
    deactivated: list[int] = []

    # ---- samplers: continuous Zipf-Mandelbrot, weight(rank) ~ (rank + q) ** -s ----
    def zm(s: float, q: float) -> tuple[float, float, float, float]:
        e1 = 1.0 - s
        if abs(e1) < 1e-6:  # s == 1 has a log-shaped inverse; a hair off is indistinguishable
            e1 = -1e-6
        c0 = q**e1
        return c0, (A + q) ** e1 - c0, 1.0 / e1, q

    ac0, aD, ainv, aq = zm(float(cfg["activity_s"]), float(cfg["activity_q"]))
    pc0, pD, pinv, pq = zm(float(cfg["popularity_s"]), float(cfg["popularity_q"]))

    def did(a: int) -> str:
        return DB[a << 5 : (a << 5) + 32]

    def pick_active() -> int:
        while True:
            a = int((ac0 + rnd() * aD) ** ainv - aq) % A
            if not STATUS[a]:
                return a

    def pick_popular() -> int:
        return (int((pc0 + rnd() * pD) ** pinv - pq) * _PP + _OP) % A

    def tid(v: int) -> str:
        return HI[v >> 30] + T3[(v >> 15) & 32767] + T3[v & 32767]

    def iso(t_us: int) -> str:
        ms = t_us // 1000
        return ISOS[ms // 1000] + MS3[ms % 1000]

    def iso_slow(t_us: int) -> str:
        return _iso_second(t_us // 1000000) + MS3[(t_us // 1000) % 1000]

    def cid() -> str:
        r = bits(48)
        return "bafyrei" + CA[r & 0xFFFF] + CB[(r >> 16) & 0xFFFF] + CC[r >> 32]

    def blobcid() -> str:
        r = bits(48)
        return "bafkrei" + CA[r & 0xFFFF] + CB[(r >> 16) & 0xFFFF] + CC[r >> 32]

    start = int(cfg["start_time_us"])
    lag = int(cfg["relay_lag_us"])
    lag_lo = lag - lag // 5  # rev time = time_us - lag * (0.8 .. 1.2)
    lagspan = max(1, 2 * (lag // 5))
    rmax = int(cfg["reorder_max_us"])
    spacing = 1e6 / float(cfg["rate"])
    seq0 = int(cfg["seq_start"])
    DAY = 86400 * 1000000
    RKOFF = [(3000 + 40 * k) << 10 for k in range(256)]  # rkey = rev - 3..13 ms (per account)

    def old_tid(max_age_us: int, min_age_us: int = DAY // 24) -> str:
        t_old = start - lag - min_age_us - int(rnd() * (max_age_us - min_age_us))
        return _tid_slow((t_old << 10) | int(rnd() * 32))

    # ---- bounded memories (rings of the most recent records) ----
    PW = int(cfg["post_window"])
    RW = int(cfg["record_window"])
    posts: list[Any] = [None] * PW  # entry: [acct | -1 deleted, ref, root_ref, parent_ref, flags]
    pw = 0
    pfill = 0
    POPW = max(1000, PW // 4)
    popposts: list[Any] = [None] * POPW  # posts by popular authors (same entries)
    ppw = 0
    deleted_posts: set[str] = set()  # uris of deleted posts (~0.3% of events): `via` and reply roots
    hot: list[Any] = []  # viral posts, newest last
    HOTCAP = 16
    LA: list[int] = [-1] * RW  # likes: author (or -1 deleted) / rkey
    LR: list[str] = [""] * RW
    lw = 0
    FW = max(1000, RW // 2)
    FA: list[int] = [-1] * FW  # follows
    FR: list[str] = [""] * FW
    fw = 0
    reposts: list[Any] = [None] * FW  # entry: [acct, rkey, ref, subject_ref]
    rw = 0
    MW = max(1000, RW // 2)
    misc: list[Any] = [None] * MW  # entry: [acct, collection, rkey, ...]
    mw = 0
    BW = max(1000, RW // 10)
    bookmarks: list[Any] = [None] * BW  # same entry objects as in misc
    bw = 0
    gates: list[Any] = [None] * BW  # threadgates: [acct, coll, rkey, post_uri, allow]
    gw = 0
    lists: list[Any] = [None] * BW  # [acct, coll, rkey, uri, purpose, name]
    lsw = 0

    # posts that existed before the stream started (popular authors, up to 90 days old)
    OLD: list[str] = []
    for _ in range(10000):
        a = pick_popular()
        OLD.append(_ref(cid(), f"at://{did(a)}/app.bsky.feed.post/{old_tid(90 * DAY)}"))
    NOLD = len(OLD)
    TANGLED = []
    for _ in range(2000):
        a = pick_popular()
        TANGLED.append(f"at://{did(a)}/sh.tangled.repo/{old_tid(365 * DAY)}")

    via_frac = float(cfg["via_frac"])
    hot_cut = via_frac + float(cfg["hot_like_frac"])
    pop_cut = hot_cut + float(cfg["popular_like_frac"])
    old_cut = 1.0 - float(cfg["old_subject_frac"])
    if old_cut < pop_cut:
        raise ValueError("via_frac + hot_like_frac + popular_like_frac + old_subject_frac must be <= 1")
    reply_frac = float(cfg["reply_frac"])
    hot_post_prob = float(cfg["hot_post_prob"])
    handle_frac = float(cfg["handle_frac"])

    def ring_pick(ring: list[Any], written: int, cap: int, power: int) -> Any:
        filled = written if written < cap else cap
        if not filled:
            return None
        u = rnd()
        if power == 2:
            u = u * u
        elif power == 3:
            u = u * u * u
        elif power == 4:
            u = u * u
            u = u * u
        return ring[(written - 1 - int(filled * u)) % cap]

    def old_ref() -> str:
        v = rnd()
        return OLD[int(NOLD * v * v)]

    def pick_post_ref() -> str:
        """A strong ref to a post: viral, by a popular author, recent, or pre-stream."""
        u = via_frac + rnd() * (1.0 - via_frac)
        if u < hot_cut:
            if hot:
                v = rnd()
                e = hot[-1 - int(len(hot) * v * v)]
                if e[0] >= 0:
                    return e[1]
        elif u < pop_cut:
            e = ring_pick(popposts, ppw, POPW, 3)
            if e is not None and e[0] >= 0:
                return e[1]
        elif u < old_cut:
            e = ring_pick(posts, pw, PW, 3)
            if e is not None and e[0] >= 0:
                return e[1]
        return old_ref()

    def pick_hot() -> str:
        """A ref to one of the current viral posts (newest favoured)."""
        if hot:
            v = rnd()
            e = hot[-1 - int(len(hot) * v * v)]
            if e[0] >= 0:
                return e[1]
        return old_ref()

    def pick_parent() -> Any:
        """A post entry to reply to (None -> a pre-stream post)."""
        u = rnd()
        if u < 0.12 and hot:
            e = hot[-1 - int(len(hot) * rnd())]
        elif u < 0.30:
            e = ring_pick(popposts, ppw, POPW, 3)
        elif u < 0.95:
            e = ring_pick(posts, pw, PW, 4)
        else:
            e = None
        if e is not None and (e[0] < 0 or (e[2] is not None and e[2][76:-2] in deleted_posts)):
            e = None  # the parent or the thread's root is gone
        return e

    def handle(a: int) -> str:
        w = WEB.get(a)
        if w:
            return w[8:]
        return f"{_name(a)}{a:x}.bsky.social"

    # ---- op table: 32768 slots; like, repost, follow first so the hot loop tests k < K ----
    mix = gen.mix
    order = ["like", "repost", "follow"] + [m for m in mix if m not in ("like", "repost", "follow")]
    total = sum(mix.values())
    NOPS = 32768
    OPS: list[str] = []
    acc = 0.0
    for name in order:
        acc += mix[name] / total * NOPS
        OPS.extend([name] * (int(round(acc)) - len(OPS)))
    OPS.extend([order[-1]] * (NOPS - len(OPS)))
    K_LIKE = OPS.count("like")
    K_REPOST = K_LIKE + OPS.count("repost")
    K_SIMPLE = K_REPOST + OPS.count("follow")

    stats_ops: dict[tuple[str, str], int] = {}
    kinds = {"commit": 0, "identity": 0, "account": 0}
    account_status: dict[str, int] = {}
    extra = {"unknown_deletes": 0, "hot_posts": 0, "replies": 0, "posts": 0}
    gen.stats = {"events": 0, "kinds": kinds, "commits": stats_ops, "account_status": account_status,
                 "notes": extra}

    # ---- commit building helpers (everything but like/repost/follow) ----
    cur = [0, 0]  # [rev int, rkey int] of the commit being built (set by head())
    last_post: list[Any] = [None]  # ring entry of the latest post (set by op_post)

    def head(a: int, t: int) -> str:
        rv = ((t - lag_lo - int(lagspan * rnd())) << 10) | CLK[a]
        last = LREV[a]
        if rv <= last:
            rv = last + 1024
        LREV[a] = rv
        cur[0] = rv
        cur[1] = rv - RKOFF[RKD[a]]
        return tid(rv)

    def commit(a: int, t: int, rev: str, op: str, coll: str, rkey: str, record: Any, c: str | None = None) -> bytes:
        kinds["commit"] += 1
        k = (coll, op)
        stats_ops[k] = stats_ops.get(k, 0) + 1
        if record is None:
            body = {"rev": rev, "operation": op, "collection": coll, "rkey": rkey}
        else:
            body = {"rev": rev, "operation": op, "collection": coll, "rkey": rkey, "record": record,
                    "cid": c or cid()}
        return dumps({"did": did(a), "time_us": t, "kind": "commit", "commit": body})

    def image_blob(mime: str = "image/jpeg") -> dict[str, Any]:
        return {"$type": "blob", "ref": {"$link": blobcid()}, "mimeType": mime, "size": 20000 + bits(20)}

    def images_embed() -> dict[str, Any]:
        imgs = []
        for _ in range(1 + int(rnd() ** 3 * 4)):
            imgs.append({"alt": "" if rnd() < 0.6 else TITLES[int(rnd() * 1024)],
                         "aspectRatio": {"height": 400 + int(rnd() * 3000), "width": 600 + int(rnd() * 3400)},
                         "image": image_blob()})
        return {"$type": "app.bsky.embed.images", "images": imgs}

    def url_pick() -> str:
        v = rnd()
        return URLS[int(NURL * v * v * v)]

    def post_record(created: str, reply: Any, force_link: bool = False) -> dict[str, Any]:
        text, blen, langs = TEXTS[int(rnd() * NTEXT)]
        facets = []
        if rnd() < 0.08:  # a mention
            m = pick_popular()
            h = "@" + handle(m)
            text = text + " " + h
            facets.append({"features": [{"$type": "app.bsky.richtext.facet#mention", "did": did(m)}],
                           "index": {"byteEnd": blen + 1 + len(h), "byteStart": blen + 1}})
            blen += 1 + len(h)
        embed = None
        u = rnd()
        if force_link:
            u = 0.2
        if u < 0.15:
            embed = images_embed()
        elif u < 0.18:
            embed = {"$type": "app.bsky.embed.video", "aspectRatio": {"height": 1920, "width": 1080},
                     "video": image_blob("video/mp4")}
        elif u < 0.26:
            url = url_pick()
            title = TITLES[int(rnd() * 1024)]
            desc = TITLES[int(rnd() * 1024)]
            if rnd() < 0.6:
                ext = {"description": desc, "thumb": image_blob(), "title": title, "uri": url}
            else:
                ext = {"description": desc, "title": title, "uri": url}
            embed = {"$type": "app.bsky.embed.external", "external": ext}
            if rnd() < 0.7:  # the link is in the text too, usually shortened
                shown = url[8:]
                if len(shown) > 29:
                    shown = shown[:26] + "..."
                text = text + "\n\n" + shown
                facets.append({"features": [{"$type": "app.bsky.richtext.facet#link", "uri": url}],
                               "index": {"byteEnd": blen + 2 + len(shown), "byteStart": blen + 2}})
                blen += 2 + len(shown)
        elif u < 0.31:
            embed = {"$type": "app.bsky.embed.record", "record": F(pick_post_ref())}
        elif u < 0.33:
            embed = {"$type": "app.bsky.embed.recordWithMedia", "media": images_embed(),
                     "record": {"$type": "app.bsky.embed.record", "record": F(pick_post_ref())}}
        if u >= 0.26 or u < 0.18:
            if rnd() < 0.06:  # a bare link in the text
                url = url_pick()
                text = text + " " + url
                facets.append({"features": [{"$type": "app.bsky.richtext.facet#link", "uri": url}],
                               "index": {"byteEnd": blen + 1 + len(url), "byteStart": blen + 1}})
                blen += 1 + len(url)
        if rnd() < 0.06:  # hashtags
            for _ in range(1 + int(rnd() * rnd() * 3)):
                tag = _TAGS[int(len(_TAGS) * rnd() ** 2)]
                text = text + " #" + tag
                facets.append({"features": [{"$type": "app.bsky.richtext.facet#tag", "tag": tag}],
                               "index": {"byteEnd": blen + 2 + len(tag), "byteStart": blen + 1}})
                blen += 2 + len(tag)
        rec: dict[str, Any] = {"$type": C_POST, "createdAt": created}
        if embed is not None:
            rec["embed"] = embed
        if facets:
            rec["facets"] = facets
        if langs is not None:
            rec["langs"] = langs
        if reply is not None:
            rec["reply"] = reply
        rec["text"] = text
        return rec

    # ---- ops: each returns a line, or None when nothing suitable is remembered yet ----

    def op_post(t: int, author: int = -1, parent: Any = None, top: bool = False) -> bytes:
        """A post by a random account (or by ``author``; a reply to the post entry ``parent``
        when given, never a reply when ``top``).  ``last_post[0]`` is its ring entry afterwards."""
        nonlocal pw, pfill, ppw
        is_hot = False
        if author >= 0:
            a = author
        else:
            if rnd() < hot_post_prob:
                a = CELEBS[int(len(CELEBS) * rnd() ** 2)]
                if not STATUS[a]:
                    is_hot = True
            if not is_hot:
                while True:
                    a = int((ac0 + rnd() * aD) ** ainv - aq) % A
                    if not STATUS[a]:
                        break
        FLAGS[a] |= 16
        rv = ((t - lag_lo - int(lagspan * rnd())) << 10) | CLK[a]
        if rv <= LREV[a]:
            rv = LREV[a] + 1024
        LREV[a] = rv
        rkv = rv - RKOFF[RKD[a]]
        rk = HI[rkv >> 30] + T3[(rkv >> 15) & 32767] + T3[rkv & 32767]
        ms = (rkv >> 10) // 1000
        if parent is not None:
            parent_ref = parent[1]
            root_ref = parent[2] or parent_ref
            rec = post_record(ISOS[ms // 1000] + MS3[ms % 1000], {"parent": F(parent_ref), "root": F(root_ref)})
            extra["replies"] += 1
        elif not is_hot and not top and rnd() < reply_frac:
            pe = pick_parent()
            if pe is None:
                parent_ref = root_ref = old_ref()
            else:
                parent_ref = pe[1]
                root_ref = pe[2] or parent_ref
            rec = post_record(ISOS[ms // 1000] + MS3[ms % 1000], {"parent": F(parent_ref), "root": F(root_ref)})
            extra["replies"] += 1
        else:
            root_ref = parent_ref = None
            rec = post_record(ISOS[ms // 1000] + MS3[ms % 1000], None)
        r = bits(48)
        c = "bafyrei" + CA[r & 0xFFFF] + CB[(r >> 16) & 0xFFFF] + CC[r >> 32]
        d = DB[a << 5 : (a << 5) + 32]
        kinds["commit"] += 1
        extra["posts"] += 1
        line = dumps({"did": d, "time_us": t, "kind": "commit",
                      "commit": {"rev": HI[rv >> 30] + T3[(rv >> 15) & 32767] + T3[rv & 32767],
                                 "operation": "create", "collection": C_POST, "rkey": rk, "record": rec, "cid": c}})
        e = [a, f'{{"cid":"{c}","uri":"at://{d}/app.bsky.feed.post/{rk}"}}', root_ref, parent_ref,
             4 if is_hot else 0]
        posts[pw % PW] = e
        pw += 1
        if pfill < PW:
            pfill += 1
        if POP[a]:
            popposts[ppw % POPW] = e
            ppw += 1
        if is_hot:
            extra["hot_posts"] += 1
            hot.append(e)
            if len(hot) > HOTCAP:
                del hot[0]
        last_post[0] = e
        return line

    def add_misc(e: list[Any]) -> None:
        nonlocal mw
        misc[mw % MW] = e
        mw += 1

    def op_block(t: int) -> bytes:
        a = pick_active()
        s = pick_popular() if rnd() < 0.5 else int(rnd() * A)
        rev = head(a, t)
        rkv = cur[1]
        rk = tid(rkv)
        add_misc([a, C_BLOCK, rk])
        return commit(a, t, rev, "create", C_BLOCK, rk,
                      {"$type": C_BLOCK, "createdAt": iso(rkv >> 10), "subject": did(s)})

    def op_list(t: int) -> bytes:
        nonlocal lsw
        a = pick_active()
        rev = head(a, t)
        rkv = cur[1]
        rk = tid(rkv)
        u = rnd()
        purpose = _LIST_PURPOSES[0 if u < 0.5 else (1 if u < 0.9 else 2)][0]
        name = TITLES[int(rnd() * 1024)][:40]
        rec = {"$type": C_LIST, "createdAt": iso(rkv >> 10)}
        if rnd() < 0.5:
            rec["description"] = TEXTS[int(rnd() * NTEXT)][0][:200]
        rec["name"] = name
        rec["purpose"] = purpose
        e = [a, C_LIST, rk, f"at://{did(a)}/{C_LIST}/{rk}", purpose, name]
        lists[lsw % BW] = e
        lsw += 1
        add_misc(e)
        return commit(a, t, rev, "create", C_LIST, rk, rec)

    def live_list(modlist: bool) -> Any:
        for _ in range(4):
            e = ring_pick(lists, lsw, BW, 1)
            if e is None:
                return None
            if e[0] >= 0 and not STATUS[e[0]] and (not modlist or e[4] == _LIST_PURPOSES[0][0]):
                return e
        return None

    def op_listitem(t: int) -> bytes:
        le = live_list(False) if rnd() < 0.97 else None
        if le is None:
            return op_list(t)
        a = le[0]
        s = pick_popular() if rnd() < 0.3 else int(rnd() * A)
        rev = head(a, t)
        rkv = cur[1]
        rk = tid(rkv)
        add_misc([a, C_LISTITEM, rk])
        return commit(a, t, rev, "create", C_LISTITEM, rk,
                      {"$type": C_LISTITEM, "createdAt": iso(rkv >> 10), "list": le[3], "subject": did(s)})

    def op_listblock(t: int) -> bytes:
        le = live_list(True)
        if le is None:
            return op_list(t)
        a = pick_active()
        rev = head(a, t)
        rkv = cur[1]
        rk = tid(rkv)
        add_misc([a, C_LISTBLOCK, rk])
        return commit(a, t, rev, "create", C_LISTBLOCK, rk,
                      {"$type": C_LISTBLOCK, "createdAt": iso(rkv >> 10), "subject": le[3]})

    def op_profile(t: int, author: int = -1) -> bytes:
        a = pick_active() if author < 0 else author
        rev = head(a, t)
        exists = FLAGS[a] & 1
        FLAGS[a] |= 1
        rec: dict[str, Any] = {"$type": C_PROFILE}
        if rnd() < 0.8:
            rec["avatar"] = image_blob()
        if rnd() < 0.5:
            rec["banner"] = image_blob()
        if exists:  # the profile was made at a fixed moment before the stream
            rec["createdAt"] = iso_slow(start - lag - DAY - (a * 7919 % 700) * (DAY // 2))
        else:
            rec["createdAt"] = iso(cur[1] >> 10)
        rec["description"] = TEXTS[int(rnd() * NTEXT)][0][:256]
        rec["displayName"] = _name(a).capitalize() + (" " + rng.choice(_EMOJI) if rnd() < 0.2 else "")
        if rnd() < 0.3:
            rec["pinnedPost"] = F(_ref(cid(), f"at://{did(a)}/{C_POST}/{old_tid(200 * DAY)}"))
        return commit(a, t, rev, "update" if exists else "create", C_PROFILE, "self", rec)

    def recent_post_for_gate(bit: int) -> Any:
        for _ in range(4):
            if not pfill:
                return None
            e = posts[(pw - 1 - int(min(pfill, 2000) * rnd())) % PW]
            if e[0] >= 0 and not STATUS[e[0]] and not e[4] & bit:
                return e
        return None

    def op_threadgate(t: int) -> bytes | None:
        nonlocal gw
        pe = recent_post_for_gate(1)
        if pe is None:
            return None
        pe[4] |= 1
        a = pe[0]
        uri = _ref_uri(pe[1])
        rk = uri[-13:]
        rev = head(a, t)
        allow: list[dict[str, Any]] = []
        u = rnd()
        if u < 0.4:
            allow.append({"$type": "app.bsky.feed.threadgate#mentionRule"})
        if u > 0.25:
            allow.append({"$type": "app.bsky.feed.threadgate#followingRule"})
        if u > 0.8:
            allow.append({"$type": "app.bsky.feed.threadgate#followerRule"})
        le = live_list(False) if rnd() < 0.15 else None
        if le is not None:
            allow.append({"$type": "app.bsky.feed.threadgate#listRule", "list": le[3]})
        rec = {"$type": C_THREADGATE, "allow": allow, "createdAt": iso(cur[1] >> 10), "hiddenReplies": [],
               "post": uri}
        e = [a, C_THREADGATE, rk, uri, allow]
        gates[gw % BW] = e
        gw += 1
        add_misc(e)
        return commit(a, t, rev, "create", C_THREADGATE, rk, rec)

    def op_postgate(t: int) -> bytes | None:
        pe = recent_post_for_gate(2)
        if pe is None:
            return None
        pe[4] |= 2
        a = pe[0]
        uri = _ref_uri(pe[1])
        rk = uri[-13:]
        rev = head(a, t)
        detached = [] if rnd() < 0.5 else [_ref_uri(pick_post_ref())]
        rec = {"$type": C_POSTGATE, "createdAt": iso(cur[1] >> 10), "detachedEmbeddingUris": detached,
               "embeddingRules": [{"$type": "app.bsky.feed.postgate#disableRule"}], "post": uri}
        add_misc([a, C_POSTGATE, rk])
        return commit(a, t, rev, "create", C_POSTGATE, rk, rec)

    def op_star(t: int) -> bytes:
        a = pick_active()
        rev = head(a, t)
        rkv = cur[1]
        rk = tid(rkv)
        v = rnd()
        add_misc([a, C_STAR, rk])
        return commit(a, t, rev, "create", C_STAR, rk,
                      {"$type": C_STAR, "createdAt": iso(rkv >> 10), "subject": TANGLED[int(len(TANGLED) * v * v)]})

    def play_item(played: str) -> dict[str, Any]:
        v = rnd()
        artist = _ARTISTS[int(len(_ARTISTS) * v)]
        track = TITLES[int(rnd() * 1024)][:48]
        item: dict[str, Any] = {"artists": [{"artistName": artist}], "duration": 120 + int(rnd() * 300)}
        if rnd() < 0.4:
            slug = artist.replace(" ", "+").replace("&", "and")
            item["originUrl"] = f"https://www.last.fm/music/{slug}/_/{track.replace(' ', '+')}"
        item["playedTime"] = played
        item["releaseName"] = track
        item["submissionClientAgent"] = _AGENTS[int(rnd() * len(_AGENTS))]
        item["trackName"] = track
        return item

    def op_play(t: int) -> bytes:
        a = pick_active()
        rev = head(a, t)
        rkv = cur[1]
        rk = tid(rkv)
        ca = iso(rkv >> 10)
        rec = {"$type": C_PLAY, "createdAt": ca}
        rec.update(play_item(ca))
        add_misc([a, C_PLAY, rk])
        return commit(a, t, rev, "create", C_PLAY, rk, rec)

    def op_tealstatus(t: int) -> bytes:
        a = pick_active()
        rev = head(a, t)
        exists = FLAGS[a] & 4
        FLAGS[a] |= 4
        ck = cur[1] >> 10
        ca = iso(ck)
        rec = {"$type": C_TEALSTATUS, "createdAt": ca, "expiry": iso(ck + 600 * 1000000),
               "item": play_item(iso(ck - int(rnd() * 3600e6))), "time": ca}
        return commit(a, t, rev, "update" if exists else "create", C_TEALSTATUS, "self", rec)

    def op_declaration(t: int) -> bytes:
        a = pick_active()
        rev = head(a, t)
        exists = FLAGS[a] & 2
        FLAGS[a] |= 2
        u = rnd()
        rec = {"$type": C_DECL, "allowIncoming": "following" if u < 0.6 else ("all" if u < 0.9 else "none"),
               "createdAt": iso(cur[1] >> 10)}
        return commit(a, t, rev, "update" if exists else "create", C_DECL, "self", rec)

    def bookmark_record(created: str) -> dict[str, Any]:
        ann: list[dict[str, Any]] = []
        if rnd() < 0.5:
            ann.append({"$type": "com.example.bookmark#link", "uri": url_pick()})
        if rnd() < 0.3:
            ann.append({"$type": "com.example.bookmark#mention", "did": did(pick_popular())})
        rec: dict[str, Any] = {"$type": C_BOOKMARK, "annotations": ann, "createdAt": created,
                               "subject": {"uri": _ref_uri(pick_post_ref())}}
        if rnd() < 0.5:
            rec["tags"] = [_TAGS[int(rnd() * len(_TAGS))]]
        return rec

    def op_bookmark(t: int) -> bytes:
        nonlocal bw
        a = pick_active()
        rev = head(a, t)
        rkv = cur[1]
        rk = tid(rkv)
        e = [a, C_BOOKMARK, rk]
        bookmarks[bw % BW] = e
        bw += 1
        add_misc(e)
        return commit(a, t, rev, "create", C_BOOKMARK, rk, bookmark_record(iso(rkv >> 10)))

    def created_of(rk: str) -> str:
        return iso_slow(int(rk.translate(_FROM_SORTABLE), 32) >> 10)

    def live_entry(ring: list[Any], written: int, cap: int, power: int) -> Any:
        for _ in range(4):
            e = ring_pick(ring, written, cap, power)
            if e is None:
                return None
            if e[0] >= 0 and not STATUS[e[0]]:
                return e
        return None

    def op_update_bookmark(t: int) -> bytes | None:
        e = live_entry(bookmarks, bw, BW, 1)
        if e is None:
            return None
        a = e[0]
        rev = head(a, t)
        return commit(a, t, rev, "update", C_BOOKMARK, e[2], bookmark_record(created_of(e[2])))

    def op_update_post(t: int) -> bytes | None:
        e = live_entry(posts, pw, PW, 2)
        if e is None or e[4] & 4:
            return None
        a = e[0]
        rev = head(a, t)
        uri = _ref_uri(e[1])
        rk = uri[-13:]
        reply = None if e[3] is None else {"parent": F(e[3]), "root": F(e[2])}
        rec = post_record(created_of(rk), reply, force_link=True)
        c = cid()
        e[1] = _ref(c, uri)  # later likes pin the new version
        return commit(a, t, rev, "update", C_POST, rk, rec, c)

    def op_update_other(t: int) -> bytes | None:
        if rnd() < 0.5:
            le = live_list(False)
            if le is None:
                return None
            a = le[0]
            rev = head(a, t)
            le[5] = TITLES[int(rnd() * 1024)][:40]
            rec = {"$type": C_LIST, "createdAt": created_of(le[2]), "name": le[5], "purpose": le[4]}
            return commit(a, t, rev, "update", C_LIST, le[2], rec)
        e = live_entry(gates, gw, BW, 1)
        if e is None:
            return None
        a = e[0]
        rev = head(a, t)
        pe = ring_pick(posts, pw, PW, 4)
        hidden = [] if pe is None or pe[0] < 0 else [_ref_uri(pe[1])]
        rec = {"$type": C_THREADGATE, "allow": e[4], "createdAt": created_of(e[2]), "hiddenReplies": hidden,
               "post": e[3]}
        return commit(a, t, rev, "update", C_THREADGATE, e[2], rec)

    def op_delete(t: int) -> bytes | None:
        u = rnd()
        for _ in range(6):
            if u < 0.72:  # likes and follows: parallel arrays
                if u < 0.50:
                    LX, LY, written, cap, coll = LA, LR, lw, RW, C_LIKE
                else:
                    LX, LY, written, cap, coll = FA, FR, fw, FW, C_FOLLOW
                filled = written if written < cap else cap
                if filled:
                    v = rnd()
                    j = (written - 1 - int(filled * v * v)) % cap
                    a = LX[j]
                    if a >= 0 and not STATUS[a]:
                        LX[j] = -1
                        return commit(a, t, head(a, t), "delete", coll, LY[j], None)
                u = rnd()
                continue
            if u < 0.84:
                ring, written, cap, coll = reposts, rw, FW, C_REPOST
            elif u < 0.94:
                ring, written, cap, coll = posts, pw, PW, C_POST
            else:
                ring, written, cap, coll = misc, mw, MW, ""
            e = ring_pick(ring, written, cap, 2)
            if e is None or e[0] < 0 or STATUS[e[0]] or (coll == C_POST and e[4] & 4):  # viral posts stay
                u = rnd()
                continue
            if coll == C_POST:
                uri = _ref_uri(e[1])
                deleted_posts.add(uri)
                rk = uri[-13:]
            elif coll:
                rk = e[1]
            else:
                coll, rk = e[1], e[2]
            a = e[0]
            e[0] = -1
            return commit(a, t, head(a, t), "delete", coll, rk, None)
        return None

    def op_delete_unknown(t: int) -> bytes:
        a = pick_active()
        u = rnd()
        coll = C_FOLLOW if u < 0.4 else (C_LIKE if u < 0.75 else (C_REPOST if u < 0.85 else C_POST))
        rev = head(a, t)
        extra["unknown_deletes"] += 1
        return commit(a, t, rev, "delete", coll, old_tid(700 * DAY), None)

    def op_identity(t: int, i: int, a: int) -> bytes:
        kinds["identity"] += 1
        d = did(a)
        if rnd() < handle_frac:
            body = {"did": d, "handle": handle(a), "seq": seq0 + i, "time": iso(t - lag)}
        else:
            body = {"did": d, "seq": seq0 + i, "time": iso(t - lag)}
        return dumps({"did": d, "time_us": t, "kind": "identity", "identity": body})

    def account_line(t: int, i: int, a: int, status: str | None) -> bytes:
        kinds["account"] += 1
        d = did(a)
        key = status or "active"
        account_status[key] = account_status.get(key, 0) + 1
        if status is None:
            body = {"active": True, "did": d, "seq": seq0 + i, "time": iso(t - lag)}
        else:
            body = {"active": False, "did": d, "seq": seq0 + i, "status": status, "time": iso(t - lag)}
        return dumps({"did": d, "time_us": t, "kind": "account", "account": body})

    def op_account(t: int, i: int) -> bytes:
        u = rnd()
        if 0.40 <= u < 0.65 and deactivated:  # reactivation of a deactivated account
            j = int(rnd() * len(deactivated))
            a = deactivated[j]
            deactivated[j] = deactivated[-1]
            deactivated.pop()
            STATUS[a] = _ACTIVE
            return account_line(t, i, a, None)
        if u >= 0.95:  # an active account re-announced (migration, resync)
            return account_line(t, i, pick_active(), None)
        for _ in range(20):  # target: a uniformly random active non-celebrity account
            a = int(rnd() * A)
            if not STATUS[a] and POP[a] != 2 and not FLAGS[a] & 8:  # 8: a scripted account
                break
        else:
            return account_line(t, i, pick_active(), None)
        if u < 0.65:
            STATUS[a] = _DEACTIVATED
            deactivated.append(a)
            return account_line(t, i, a, "deactivated")
        if u < 0.73:
            STATUS[a] = _TAKENDOWN
            return account_line(t, i, a, "takendown")
        if u < 0.75:
            STATUS[a] = _SUSPENDED
            return account_line(t, i, a, "suspended")
        STATUS[a] = _DELETED
        return account_line(t, i, a, "deleted")

    OPFN = {
        "post": op_post, "block": op_block, "profile": op_profile, "listitem": op_listitem,
        "list": op_list, "listblock": op_listblock, "star": op_star, "play": op_play,
        "threadgate": op_threadgate, "postgate": op_postgate, "declaration": op_declaration,
        "bookmark": op_bookmark, "tealstatus": op_tealstatus, "update_bookmark": op_update_bookmark,
        "update_post": op_update_post, "update_other": op_update_other, "delete": op_delete,
        "delete_unknown": op_delete_unknown,
    }
    OPF = [OPFN.get(o) for o in OPS]
    IS_ID = [o == "identity" for o in OPS]

    # ---- scripted DataPlane accounts (dataplane=True; see GENERATOR.md) ----
    # A sorted list of (event index, tie, action, args); the main loop runs the due action
    # instead of a random op.  Indices depend on the parameters only (never on n), so a
    # shorter stream is still a prefix of a longer one.  An action that must first emit
    # something else (a followee's first post) stays due and runs at the next event.
    script: list[tuple[int, int, str, Any]] = []
    dp_queue: list[int] = []  # accounts to follow the mega account first (viewers' followees)
    dp_pool_all: list[int] = []  # every viewer's followee (some become big-list members)
    if cfg["dataplane"]:
        script, dp_queue, dp_pool_all, protected, scripted_viewers = _dataplane_script(cfg, A, n, gen.seed)
        for a in protected:
            FLAGS[a] |= 8
        for a in scripted_viewers:  # no random activity at all: every commit of theirs is scripted
            STATUS[a] = _SCRIPTED
        gen.stats["dataplane"] = dp_stats = {"viewer_follows": 0, "followee_first_posts": 0, "followbacks": 0,
                                             "mega_follows": 0, "big_list_items": 0, "thread_replies": 0,
                                             "threads_cut": 0, "skipped": 0}
    sp = 0
    nxt = script[0][0] if script else n + 1
    big_list_entries: dict[int, list[Any]] = {}  # list j -> [owner, coll, rkey, uri, purpose, name]
    threads: dict[int, list[Any]] = {}  # thread id -> [root entry, last entry, participants]
    mega_queue = {"pos": 0, "k": 0}
    spec = _special(A, int(cfg["viewers"]), int(cfg["big_lists"])) if cfg["dataplane"] else {}

    def follow_commit(a: int, s: int, t: int, in_ring: bool) -> bytes:
        nonlocal fw
        rev = head(a, t)
        rkv = cur[1]
        rk = tid(rkv)
        if in_ring:  # may be unfollowed later, like any follow
            j = fw % FW
            FA[j] = a
            FR[j] = rk
            fw += 1
            stats_ops[(C_FOLLOW, "create")] = stats_ops.get((C_FOLLOW, "create"), 0) - 1  # counted via fw
            kinds["commit"] -= 1
        return commit(a, t, rev, "create", C_FOLLOW, rk,
                      {"$type": C_FOLLOW, "createdAt": iso(rkv >> 10), "subject": did(s)})

    def next_mega_follower() -> int:
        """The next account to follow the mega account: viewers' followees first (every 4th
        slot, while any is left), else the next active account of a fixed permutation."""
        q = dp_queue
        k = mega_queue["k"]
        mega_queue["k"] = k + 1
        if k % 4 == 0:
            while mega_queue["pos"] < len(q):
                b = q[mega_queue["pos"]]
                mega_queue["pos"] += 1
                if not STATUS[b] and not FLAGS[b] & 32:
                    return b
        for _ in range(64):
            b = (dp_perm[0] * _PP2 + _OP2) % A
            dp_perm[0] += 1
            if not STATUS[b] and not FLAGS[b] & 32 and b != spec["mega"]:
                return b
        return -1

    def run_special(t: int, i: int) -> bytes | None:
        """The line of the due scripted action (None: it could not run; a random op instead)."""
        nonlocal sp, nxt
        idx, _, act, arg = script[sp]
        line: bytes | None = None
        done = True
        if act == "identity":
            kinds["identity"] += 1
            d = did(arg)
            line = dumps({"did": d, "time_us": t, "kind": "identity",
                          "identity": {"did": d, "handle": handle(arg), "seq": seq0 + i, "time": iso(t - lag)}})
        elif act == "profile":
            line = op_profile(t, arg)
        elif act == "vfollow":
            v, b = arg
            if not FLAGS[b] & 16:  # the followee posts before the viewer follows it
                line = op_post(t, b)
                dp_stats["followee_first_posts"] += 1
                done = False
            else:
                line = follow_commit(v, b, t, False)
                dp_stats["viewer_follows"] += 1
        elif act == "followback":
            b, v = arg
            line = follow_commit(b, v, t, False)
            dp_stats["followbacks"] += 1
        elif act == "vblock":
            v, b = arg
            rev = head(v, t)
            rk = tid(cur[1])
            line = commit(v, t, rev, "create", C_BLOCK, rk,
                          {"$type": C_BLOCK, "createdAt": iso(cur[1] >> 10), "subject": did(b)})
        elif act == "vpost":
            line = op_post(t, arg)
        elif act == "mfollow":
            b = next_mega_follower()
            if b >= 0:
                FLAGS[b] |= 32
                line = follow_commit(b, spec["mega"], t, True)
                dp_stats["mega_follows"] += 1
        elif act == "biglist":
            j = arg
            a = spec["owners"][j]
            rev = head(a, t)
            rk = tid(cur[1])
            purpose = _LIST_PURPOSES[j % 2][0]
            name = f"big list {j} ({'mod' if j % 2 == 0 else 'curate'})"
            big_list_entries[j] = [a, C_LIST, rk, f"at://{did(a)}/{C_LIST}/{rk}", purpose, name]
            line = commit(a, t, rev, "create", C_LIST, rk,
                          {"$type": C_LIST, "createdAt": iso(cur[1] >> 10), "description": "scripted big list",
                           "name": name, "purpose": purpose})
        elif act == "listitem":
            j = arg
            le = big_list_entries.get(j)
            if le is not None:
                for _ in range(32):
                    c = dp_lists_next[j]
                    dp_lists_next[j] = c + 1
                    if c % 5 == 0 and dp_pool_all:  # every 5th member: someone the viewers follow
                        b = dp_pool_all[(c // 5 * 7919) % len(dp_pool_all)]
                    else:
                        b = ((c + 1000003 * (j + 1)) * _PP2 + _OP2) % A
                    if not STATUS[b] and b != le[0]:
                        break
                a = le[0]
                rev = head(a, t)
                rk = tid(cur[1])
                add_misc([a, C_LISTITEM, rk])
                line = commit(a, t, rev, "create", C_LISTITEM, rk,
                              {"$type": C_LISTITEM, "createdAt": iso(cur[1] >> 10), "list": le[3],
                               "subject": did(b)})
                dp_stats["big_list_items"] += 1
        elif act == "vlistblock":
            v, j = arg
            le = big_list_entries.get(j)
            if le is not None:
                rev = head(v, t)
                rk = tid(cur[1])
                line = commit(v, t, rev, "create", C_LISTBLOCK, rk,
                              {"$type": C_LISTBLOCK, "createdAt": iso(cur[1] >> 10), "subject": le[3]})
        elif act == "thread":
            th, j = arg
            if j == 0:  # the root: a popular author
                for _ in range(16):
                    a = pick_popular()
                    if not STATUS[a]:
                        break
                else:
                    a = pick_active()
                line = op_post(t, a, None, True)
                root = last_post[0]
                threads[th] = [root, root, [a, pick_active(), pick_active()]]
            else:
                st = threads.get(th)
                if st is not None:
                    root, prev, who = st
                    if root[0] >= 0 and prev[0] >= 0 and _ref_uri(root[1]) not in deleted_posts:
                        a = who[j % 3]
                        if STATUS[a]:
                            a = pick_active()
                        line = op_post(t, a, prev)
                        st[1] = last_post[0]
                        dp_stats["thread_replies"] += 1
                    else:  # the conversation lost a post: it ends here
                        del threads[th]
                        dp_stats["threads_cut"] += 1
                if j == thread_depth and th in threads:
                    del threads[th]
        if done:
            sp += 1
            nxt = script[sp][0] if sp < len(script) else n + 1
        if line is None:
            dp_stats["skipped"] += 1
        return line

    thread_depth = int(cfg["thread_depth"])
    dp_perm = [0]  # position in the permutation of mega followers
    dp_lists_next = [0] * int(cfg["big_lists"])

    # ---- per-event jitter tables (indexed by random bits) ----
    STEP = [spacing * (0.5 + (j + 0.5) / 1024) for j in range(1024)]  # uniform 0.5..1.5 x spacing
    DELAY = [int(rmax * ((j + 0.5) / 1024) ** 3) for j in range(1024)]  # time_us steps back, <= rmax
    LAGJ = [lag_lo + lagspan * j // 256 for j in range(256)]  # time_us - rev time

    # ---- the loop ----
    base = float(start)
    i = 0
    n_via = 0
    try:
        while i < n:
            r = bits(43)  # op slot | arrival step | reorder delay | rev lag jitter
            k = r & 32767
            if i:
                base += STEP[(r >> 15) & 1023]
                t = int(base) - DELAY[(r >> 25) & 1023]
                if t < start:
                    t = start
            else:
                t = start
            if i >= nxt:  # a scripted DataPlane action is due (dataplane=True only)
                line = run_special(t, i)
                if line is not None:
                    yield line
                    i += 1
                    continue
            if k < K_SIMPLE:
                # ---- like / repost / follow: the hot path, inlined, JSON by f-string ----
                # (every interpolated value is a DID, TID, timestamp, CID or a pre-serialised
                #  ref: ASCII without quotes or backslashes, so no escaping is needed)
                while True:
                    a = int((ac0 + rnd() * aD) ** ainv - aq) % A
                    if not STATUS[a]:
                        break
                rv = ((t - LAGJ[r >> 35]) << 10) | CLK[a]
                if rv <= LREV[a]:
                    rv = LREV[a] + 1024
                LREV[a] = rv
                rkv = rv - RKOFF[RKD[a]]
                rk = f"{HI[rkv >> 30]}{T3[(rkv >> 15) & 32767]}{T3[rkv & 32767]}"
                ms = (rkv >> 10) // 1000
                r = bits(48)
                if k < K_REPOST:
                    u = rnd()
                    if u < via_frac:  # liked/reposted via someone's repost: same subject
                        v = rnd()
                        e = reposts[(rw - 1 - int((rw if rw < FW else FW) * v * v * v)) % FW]
                        if e is not None and e[0] >= 0 and e[3][76:-2] not in deleted_posts:
                            sj = e[3] + ',"via":' + e[2]
                            n_via += 1
                        else:
                            sj = pick_post_ref()
                    elif u < hot_cut:
                        sj = pick_hot()
                    elif u < pop_cut:  # a recent post by a popular author
                        v = rnd()
                        e = popposts[(ppw - 1 - int((ppw if ppw < POPW else POPW) * v * v * v)) % POPW]
                        sj = e[1] if e is not None and e[0] >= 0 else old_ref()
                    elif u < old_cut:
                        v = rnd()
                        e = posts[(pw - 1 - int(pfill * v * v * v)) % PW]
                        sj = e[1] if e is not None and e[0] >= 0 else old_ref()
                    else:
                        v = rnd()
                        sj = OLD[int(NOLD * v * v)]
                    if k < K_LIKE:
                        yield (f'{{"did":"{DB[a << 5 : (a << 5) + 32]}","time_us":{t},"kind":"commit","commit":'
                               f'{{"rev":"{HI[rv >> 30]}{T3[(rv >> 15) & 32767]}{T3[rv & 32767]}","operation":"create",'
                               f'"collection":"app.bsky.feed.like","rkey":"{rk}","record":{{"$type":"app.bsky.feed.like",'
                               f'"createdAt":"{ISOS[ms // 1000]}{MS3[ms % 1000]}","subject":{sj}}},"cid":"bafyrei'
                               f'{CA[r & 0xFFFF]}{CB[(r >> 16) & 0xFFFF]}{CC[r >> 32]}"}}}}').encode()
                        j = lw % RW
                        LA[j] = a
                        LR[j] = rk
                        lw += 1
                    else:
                        d = DB[a << 5 : (a << 5) + 32]
                        c = f"bafyrei{CA[r & 0xFFFF]}{CB[(r >> 16) & 0xFFFF]}{CC[r >> 32]}"
                        yield (f'{{"did":"{d}","time_us":{t},"kind":"commit","commit":'
                               f'{{"rev":"{HI[rv >> 30]}{T3[(rv >> 15) & 32767]}{T3[rv & 32767]}","operation":"create",'
                               f'"collection":"app.bsky.feed.repost","rkey":"{rk}","record":{{"$type":"app.bsky.feed.repost",'
                               f'"createdAt":"{ISOS[ms // 1000]}{MS3[ms % 1000]}","subject":{sj}}},"cid":"{c}"}}}}').encode()
                        if len(sj) > 200:  # strip the via (refs are 148 chars): the entry keeps the subject
                            sj = sj[: sj.index(',"via":')]
                        reposts[rw % FW] = [a, rk, f'{{"cid":"{c}","uri":"at://{d}/app.bsky.feed.repost/{rk}"}}', sj]
                        rw += 1
                else:
                    s = (int((pc0 + rnd() * pD) ** pinv - pq) * _PP + _OP) % A
                    if s == a:
                        s = (s + 1) % A
                    yield (f'{{"did":"{DB[a << 5 : (a << 5) + 32]}","time_us":{t},"kind":"commit","commit":'
                           f'{{"rev":"{HI[rv >> 30]}{T3[(rv >> 15) & 32767]}{T3[rv & 32767]}","operation":"create",'
                           f'"collection":"app.bsky.graph.follow","rkey":"{rk}","record":{{"$type":"app.bsky.graph.follow",'
                           f'"createdAt":"{ISOS[ms // 1000]}{MS3[ms % 1000]}","subject":"{DB[s << 5 : (s << 5) + 32]}"}},'
                           f'"cid":"bafyrei{CA[r & 0xFFFF]}{CB[(r >> 16) & 0xFFFF]}{CC[r >> 32]}"}}}}').encode()
                    j = fw % FW
                    FA[j] = a
                    FR[j] = rk
                    fw += 1
                i += 1
                continue
            f = OPF[k]
            if f is not None:
                line = f(t)
                if line is None:  # nothing suitable remembered yet: emit a post instead
                    line = op_post(t)
                yield line
            elif IS_ID[k]:
                a = pick_active()
                yield op_identity(t, i, a)
                if rnd() < 0.3 and i + 1 < n:  # a new account: identity, then account(active)
                    i += 1
                    r = bits(43)
                    base += STEP[(r >> 15) & 1023]
                    t = max(start, int(base) - DELAY[(r >> 25) & 1023])
                    yield account_line(t, i, a, None)
            else:
                yield op_account(t, i)
            i += 1
    finally:
        n_post = extra.pop("posts")
        n_like, n_repost, n_follow = lw, rw, fw
        for key, cnt in (((C_LIKE, "create"), n_like), ((C_REPOST, "create"), n_repost),
                         ((C_FOLLOW, "create"), n_follow), ((C_POST, "create"), n_post)):
            stats_ops[key] = stats_ops.get(key, 0) + cnt
        kinds["commit"] += n_like + n_repost + n_follow
        extra["likes_reposts_with_via"] = n_via
        gen.stats["events"] = i
        gen.stats["accounts"] = A
        gen.stats["celebrities"] = n_celebs


_FROM_SORTABLE = str.maketrans(S32, "0123456789abcdefghijklmnopqrstuv")


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def _stats_json(stats: dict[str, Any]) -> dict[str, Any]:
    commits = stats.get("commits", {})
    by_coll: dict[str, dict[str, int]] = {}
    ops: dict[str, int] = {}
    for (coll, op), c in sorted(commits.items()):
        if not c:
            continue
        by_coll.setdefault(coll, {})[op] = c
        ops[op] = ops.get(op, 0) + c
    return {
        "events": stats.get("events", 0),
        "accounts": stats.get("accounts"),
        "celebrities": stats.get("celebrities"),
        "kinds": stats.get("kinds", {}),
        "operations": ops,
        "collections": by_coll,
        "account_status": stats.get("account_status", {}),
        "notes": stats.get("notes", {}),
        **({"dataplane": stats["dataplane"]} if "dataplane" in stats else {}),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Generate deterministic, realistic Jetstream v1 JSONL events.")
    ap.add_argument("--events", type=int, required=True, help="number of events (lines)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="-", help="output path (default stdout); *.zst is zstd-compressed")
    ap.add_argument("--start-time-us", type=int, default=DEFAULTS["start_time_us"])
    ap.add_argument("--rate", type=float, default=DEFAULTS["rate"], help="events per second of time_us")
    ap.add_argument("--accounts", type=int, default=None, help="default max(1000, events // 10)")
    ap.add_argument("--dataplane", action="store_true",
                    help="add the scripted DataPlane accounts (viewers, mega account, big lists, long threads)")
    ap.add_argument("--stats", action="store_true", help="print a JSON summary to stderr at the end")
    args = ap.parse_args(argv)
    if args.events < 0:
        ap.error("--events must be >= 0")
    if args.rate <= 0:
        ap.error("--rate must be > 0")

    gen = EventGenerator(args.events, args.seed, start_time_us=args.start_time_us, rate=args.rate,
                         accounts=args.accounts, dataplane=args.dataplane)
    # The generator creates no reference cycles, so the cyclic GC only costs time here (5-20%).
    gc.disable()
    t0 = time.perf_counter()
    fh = None
    sink = None
    try:
        if args.out == "-":
            raw = sys.stdout.buffer
        else:
            fh = raw = open(args.out, "wb")
        if args.out.endswith(".zst"):
            import zstandard

            sink = zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False)
            write = sink.write
        else:
            write = raw.write
        it = iter(gen)
        while True:
            chunk = list(islice(it, 4096))
            if not chunk:
                break
            chunk.append(b"")
            write(b"\n".join(chunk))
        if sink is not None:
            sink.close()
            sink = None
        raw.flush()
    except BrokenPipeError:  # e.g. `gen_events.py ... | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    finally:
        if fh is not None:
            fh.close()
    if args.stats:
        st = _stats_json(gen.stats)
        el = time.perf_counter() - t0
        st["seconds"] = round(el, 3)
        st["events_per_second"] = round(st["events"] / el) if el > 0 else None
        sys.stderr.write(orjson.dumps(st, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
