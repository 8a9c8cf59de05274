"""The SQLite file: schema, pragmas and how connections are opened.

Tables (all integers are SQLite varints on disk):
  meta(k, v)                 cursor, counters, the inactive-actor bitmap, zstd dictionaries
  actor(aid, did, ...)       DIDs as integer IDs, plus account state and handle, and the
                             (order time, seq) of the account and identity events applied last
  coll(cid, nsid)            collection NSIDs as small integers
  source(sid, coll, path)    (collection, path) pairs as small integers
  alias(aid, coll, rkey, sk) sort keys of records whose rkey is not a TID
  fwd(sk, aid, coll, rev, links)   forward index: what each record links to (rev is
                             stored as rev - sk, a few bytes);
                             links NULL is a tombstone that keeps the delete's rev
  body(sk, aid, coll, ...)   record bodies of the body collections: zstd-compressed JSON, or
                             the compact codec of small records (store/bodies.py)
  run(run, level, blocks, gen)  the sorted runs of the backlink index (an LSM of tables);
                             gen counts rewrites of the run's chunks (readers cache per gen)
  runkeys(run, data)         per run, the hashes of the keys it may hold (store/runfilter.py)
  bl(run, tkey, sid, lo, data)  backlink chunks: per run and (target, source), entries
                             newest first, split into chunks keyed by their lowest sort key
                             (0 for a run's oldest chunk, which is most keys' only one)
  merge(output, level, inputs, next)  merges of runs under way, done in slices: keys with
                             target keys below next have moved to the output run
  purge(aid, rev, lap, start, reconcile)  deleted accounts whose rows are still to be
                             removed, and where the purge sweep stood when they joined
                             (store/purge.py); reconcile 1: a backfill's stale rows instead
  backfill(did, state, ...)  per repo of `smalldp backfill`: queued, running, done or failed
                             (and why), its rev, records and bytes (ingest/backfill.py)
  tl(bucket, seg, data)      the timeline index: per time bucket, who posted (store/timeline.py)
  actor_rev(aid, rev)        the rev of each account's newest commit seen

A record is keyed (sk, aid, coll): sk is its rkey's TID value, so records created
now sit at the right edge of fwd and body, and creates append instead of landing
at random places in a big B-tree.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA_VERSION = 8  # 2: derived links, tl, actor_rev, run.gen; 3: actor.acct_us, actor.id_us; 4: merge;
# 5: purge.lap, purge.start; 6: purge.reconcile, backfill; 7: compact bodies (store/bodies.py);
# 8: runkeys (store/runfilter.py)
# Older versions open_writer upgrades in place (a few ALTER TABLEs, no data rewritten).
MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: ("ALTER TABLE actor ADD COLUMN acct_us INTEGER", "ALTER TABLE actor ADD COLUMN id_us INTEGER"),
    3: (),  # the merge table, which SCHEMA creates; no merge is under way in a store of version 3
    # the sweep's place per queued account; NULL (queued before): they join the sweep when opened
    4: ("ALTER TABLE purge ADD COLUMN lap INTEGER", "ALTER TABLE purge ADD COLUMN start INTEGER"),
    # the backfill table is new (SCHEMA creates it); every purge queued before is a deletion
    5: ("ALTER TABLE purge ADD COLUMN reconcile INTEGER NOT NULL DEFAULT 0",),
    # compact bodies (first byte 0x80 | flags) of likes, reposts, follows, blocks, list items
    # and list blocks: nothing to rewrite; those written before simply have no body (their
    # records are absent from getRecords and the AppView's Get*Records until written again)
    6: (),
    # the runkeys table, which SCHEMA creates; runs written before have no filter, so
    # readers ask them for every key until `smalldp migrate` builds their filters
    7: (),
}
DB_NAME = "smalldp.sqlite"
PAGE_SIZE = 8192
# Checkpoint every 8192 pages (64 MiB) rather than SQLite's 1000: with big batches the
# default would checkpoint on every commit, writing hot pages to the card again and again.
WAL_AUTOCHECKPOINT_PAGES = 8192
# The WAL file keeps the size of its biggest transaction (a merge can write hundreds of
# MB) unless told otherwise: truncate it back to one checkpoint's worth when SQLite
# restarts it, so the disk space it holds stays bounded.
WAL_SIZE_LIMIT = WAL_AUTOCHECKPOINT_PAGES * PAGE_SIZE

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS actor(
  aid INTEGER PRIMARY KEY, did TEXT NOT NULL UNIQUE,
  active INTEGER NOT NULL DEFAULT 1, status TEXT, handle TEXT,
  acct_seq INTEGER, id_seq INTEGER, purged_rev INTEGER, acct_us INTEGER, id_us INTEGER);
CREATE INDEX IF NOT EXISTS actor_handle ON actor(handle) WHERE handle IS NOT NULL;
CREATE TABLE IF NOT EXISTS coll(cid INTEGER PRIMARY KEY, nsid TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS source(
  sid INTEGER PRIMARY KEY, coll INTEGER NOT NULL, path TEXT NOT NULL, UNIQUE(coll, path));
CREATE TABLE IF NOT EXISTS alias(
  aid INTEGER, coll INTEGER, rkey TEXT, sk INTEGER NOT NULL,
  PRIMARY KEY(aid, coll, rkey)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fwd(
  sk INTEGER, aid INTEGER, coll INTEGER, rev INTEGER NOT NULL, links BLOB,
  PRIMARY KEY(sk, aid, coll)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS body(
  sk INTEGER, aid INTEGER, coll INTEGER, cid TEXT, indexed_us INTEGER NOT NULL, data BLOB NOT NULL,
  PRIMARY KEY(sk, aid, coll)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS run(run INTEGER PRIMARY KEY, level INTEGER NOT NULL, blocks INTEGER NOT NULL,
  gen INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS runkeys(run INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS bl(
  run INTEGER, tkey BLOB, sid INTEGER, lo INTEGER, data BLOB NOT NULL,
  PRIMARY KEY(run, tkey, sid, lo)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS merge(output INTEGER PRIMARY KEY, level INTEGER NOT NULL, inputs TEXT NOT NULL,
  next BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS purge(aid INTEGER PRIMARY KEY, rev INTEGER NOT NULL, lap INTEGER, start INTEGER,
  reconcile INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS backfill(did TEXT PRIMARY KEY, state TEXT NOT NULL, rev TEXT, reason TEXT,
  records INTEGER, bytes INTEGER, stale INTEGER, updated_us INTEGER);
CREATE TABLE IF NOT EXISTS tl(bucket INTEGER, seg INTEGER, data BLOB NOT NULL,
  PRIMARY KEY(bucket, seg)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS actor_rev(aid INTEGER PRIMARY KEY, rev INTEGER NOT NULL);
"""


def db_path(data_dir: Path) -> Path:
    """Where the SQLite file of a data directory lives."""
    return Path(data_dir) / DB_NAME


def open_writer(path: Path, cache_mb: int, mmap_mb: int) -> sqlite3.Connection:
    """Open (creating if needed) the one read-write connection."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a crash keeps the database consistent; a power cut may lose
    # the last commits, which the cursor then replays.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA cache_size={-cache_mb * 1024}")
    conn.execute(f"PRAGMA mmap_size={mmap_mb * 1024 * 1024}")
    # Temp tables and sorts (compaction) may spill to files: memory stays bounded.
    conn.execute("PRAGMA temp_store=FILE")
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    conn.executescript(SCHEMA)
    migrate(conn, path)
    return conn


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring a store written by an earlier smalldp to SCHEMA_VERSION, in one transaction
    (a new file gets the version recorded); refuse a file from a newer smalldp."""
    version = conn.execute("SELECT v FROM meta WHERE k='schema'").fetchone()
    if version is None:
        conn.execute("INSERT INTO meta VALUES('schema', ?)", (SCHEMA_VERSION,))
        return
    current = int(version[0])
    if current == SCHEMA_VERSION:
        return
    if current > SCHEMA_VERSION or current not in MIGRATIONS:
        raise RuntimeError(f"{path}: schema version {current}, this smalldp reads {SCHEMA_VERSION}"
                           + (" (written by a newer smalldp)" if current > SCHEMA_VERSION else ""))
    conn.execute("BEGIN IMMEDIATE")
    try:
        while current != SCHEMA_VERSION:
            for statement in MIGRATIONS[current]:
                conn.execute(statement)
            current += 1
        conn.execute("UPDATE meta SET v=? WHERE k='schema'", (SCHEMA_VERSION,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def upgrade_in_place(path: Path) -> None:
    """Migrate the store at ``path`` if it is from an earlier smalldp (for processes that
    only read, such as `smalldp serve --no-ingest`: their queries expect this schema)."""
    open_writer(path, cache_mb=8, mmap_mb=0).close()


def open_reader(path: Path, cache_mb: int, mmap_mb: int) -> sqlite3.Connection:
    """Open a read-only connection (queries never take the write lock)."""
    if not path.exists():
        raise FileNotFoundError(f"no smalldp database at {path}: run `smalldp import` first")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                           check_same_thread=False)
    conn.execute(f"PRAGMA cache_size={-cache_mb * 1024}")
    conn.execute(f"PRAGMA mmap_size={mmap_mb * 1024 * 1024}")
    return conn
