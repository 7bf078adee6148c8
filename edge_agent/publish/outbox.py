"""Durable outbox: QoS>=1 results wait in SQLite until the broker acknowledges them.

A result is appended *before* it is handed to paho and deleted only on PUBACK, so neither a broker outage
nor a daemon crash loses it; after either, pending rows are resent in id order (= seq order, because the
pipeline appends them in seq order). The queue is bounded by count and bytes; when full the oldest rows go
and the drops are counted (persisted in the same database, so they survive restarts).

The same database holds the per-pipeline seq reservations (``SeqCounter``) and the boot number: they are
here, in one module a little over the usual size, because they share the database, its connection
settings and its fault handling below, and must stay consistent with each other across a crash.

Storage faults (an SD card is where these happen):
- a database that SQLite cannot read (truncated by a power cut, corrupted) is moved aside as
  ``<name>.corrupt-<UTC time>`` (with its -wal/-shm files) and a fresh one is started, with one ERROR
  log line: the device keeps working instead of failing at every start. The results in the old file are
  lost to the daemon (kept on disk for a human); seq then continues from the current time in milliseconds,
  which is above any seq this device can have handed out, so seq still never repeats;
- a full file system: the results that cannot be stored are dropped and counted (``outbox.dropped``), the
  daemon keeps running and stores again by itself once there is room; nothing stored before is touched.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.errors import ConfigError, StorageFullError

log = logging.getLogger(__name__)
DEFAULT_MAX_MESSAGES = 100_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
SEQ_BLOCK = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids are never reused, even after a full drain
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS seq_reservations (pipeline TEXT PRIMARY KEY, reserved_until INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One pending result: what to publish, and the row id to acknowledge."""

    id: int
    topic: str
    payload: bytes
    qos: int


def is_disk_full(exc: BaseException) -> bool:
    """SQLITE_FULL: the file system (or the database's size limit) has no room."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code == sqlite3.SQLITE_FULL
    return "database or disk is full" in str(exc)


def _corrupt(exc: BaseException) -> bool:
    """The file is there but is not a usable database (not: locked, read-only, no room)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    text = str(exc)
    return "malformed" in text or "not a database" in text


def _move_aside(path: Path, exc: BaseException) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        part = Path(f"{path}{suffix}")
        if part.exists():
            part.rename(Path(f"{target}{suffix}"))
    log.error(
        "the outbox database %s was damaged (%s): moved it aside to %s and started a fresh one; the "
        "results that were waiting in it are not sent (the file is kept for inspection)",
        path,
        exc,
        target.name,
    )
    return target


def _connect(path: Path, *, synchronous: str) -> sqlite3.Connection:
    """Open the database in WAL mode; a damaged one is moved aside once and a fresh one opened."""
    try:
        return _open(path, synchronous=synchronous)
    except sqlite3.DatabaseError as exc:
        if not _corrupt(exc):
            raise ConfigError(
                f"the outbox database {path} is not usable ({exc}); check the state directory's file "
                "system (read-only? full?) and its owner"
            ) from exc
        _move_aside(path, exc)
    conn = _open(path, synchronous=synchronous)
    # seq reservations and the boot number were in the damaged file: continue above anything used before
    now = time.time()
    conn.executemany(
        "INSERT OR IGNORE INTO counters (name, value) VALUES (?, ?)",
        [("seq_floor", int(now * 1000)), ("boot", int(now))],
    )
    return conn


def _open(path: Path, *, synchronous: str) -> sqlite3.Connection:
    """Open the database in WAL mode; one connection per object, guarded by that object's lock."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a batch is exactly one transaction.
        # check_same_thread=False: the publisher's sender thread appends and acks, the daemon's main thread
        # reads counters and the seq counter reserves from the pipelines; the owner's lock serialises them.
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10.0)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(
            f"cannot open the outbox database {path}: {exc}; check that the state directory exists and is "
            "writable by the service user"
        ) from exc
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        # In WAL mode synchronous=NORMAL loses nothing when the *process* crashes (SIGKILL, OOM kill): a
        # committed transaction is in the WAL file, which the OS keeps. Only a power cut can roll back the
        # last commits; FULL would fsync every commit, which costs ~10x on SD cards.
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.executescript(_SCHEMA)
        # a file SQLite can open may still be damaged further in: check it once per start (milliseconds
        # for a typical outbox; a deep-damaged page shows up here and not as a crash in the sender thread)
        problem = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
        if problem != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed: {problem}")
    except sqlite3.DatabaseError:
        conn.close()
        raise
    return conn


class Outbox:
    """Bounded durable FIFO of results awaiting a broker acknowledgement. Thread-safe."""

    def __init__(
        self, path: Path, max_messages: int = DEFAULT_MAX_MESSAGES, max_bytes: int = DEFAULT_MAX_BYTES
    ):
        if max_messages < 1 or max_bytes < 1:
            raise ConfigError("outbox bounds must be positive (max_messages, max_bytes)")
        self.path = Path(path)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._conn = _connect(self.path, synchronous="NORMAL")
        # Depth and bytes live in memory (loaded once) so stats and bound checks cost no query.
        count, size = self._conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
        self._depth = int(count)
        self._bytes = int(size)
        row = self._conn.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        self._dropped = int(row[0]) if row else 0
        self._unstored = 0  # dropped since the file system became full
        self._unpersisted = 0  # of those, not yet added to the persisted counter
        self._unstored_since: float | None = None
        self._closed = False

    # -- writers -------------------------------------------------------------------------------------------
    def append(self, topic: str, payload: bytes, qos: int) -> int:
        """Store one result durably; returns its row id. Drops the oldest rows when full (counted)."""
        return self.append_many([(topic, payload, qos)])[0]

    def append_many(self, items: Iterable[tuple[str, bytes, int]]) -> list[int]:
        """Store several results in one transaction (one WAL commit), in order; returns their row ids."""
        rows = [(topic, bytes(payload), int(qos), len(payload)) for topic, payload, qos in items]
        if not rows:
            return []
        with self._lock:
            self._check_open()
            conn = self._conn
            ids: list[int] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    cur = conn.cursor()
                    for row in rows:
                        cur.execute("INSERT INTO outbox (topic, payload, qos, size) VALUES (?, ?, ?, ?)", row)
                        ids.append(int(cur.lastrowid))  # type: ignore[arg-type]
                    depth = self._depth + len(rows)
                    size = self._bytes + sum(r[3] for r in rows)
                    dropped = 0
                    if depth > self.max_messages or size > self.max_bytes:
                        depth, size, dropped = self._drop_oldest(cur, depth, size, keep_from=ids[-1])
                    persisted = self._persist_unstored(cur)
                    conn.execute("COMMIT")
                    self._unpersisted -= persisted
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if not is_disk_full(exc):
                    raise
                self._disk_full(len(rows), exc)
                return []
            if self._unstored_since is not None:
                log.warning("outbox %s: storing again (%d dropped while full)", self.path, self._unstored)
                self._unstored_since = None
                self._unstored = 0
            self._depth, self._bytes = depth, size
            if dropped:
                self._warn_dropped(dropped)
            return ids

    def _disk_full(self, count: int, exc: BaseException) -> None:
        """No room to store: these results are dropped and counted; later appends try again."""
        self._dropped += count
        self._unstored += count
        self._unpersisted += count
        if self._unstored_since is None:
            self._unstored_since = time.monotonic()
            log.error(
                "outbox %s: the file system is full (%s); new results are dropped and counted until there is "
                "room again (free space on the state directory's file system)",
                self.path,
                exc,
            )

    def _persist_unstored(self, cur: sqlite3.Cursor) -> int:
        """Drops counted while the disk was full go into the persisted counter with the next commit."""
        if self._unpersisted:
            cur.execute(
                "INSERT INTO counters (name, value) VALUES ('dropped', ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (self._unpersisted,),
            )
        return self._unpersisted

    def _warn_dropped(self, dropped: int) -> None:
        before = self._dropped
        self._dropped += dropped
        if before == 0 or before // 1000 != self._dropped // 1000:  # first drop, then every 1,000th
            log.warning(
                "outbox %s is full (max_messages=%d, max_bytes=%d): dropped the oldest results, %d so far; "
                "is the broker reachable? raise outbox.max_messages/max_bytes to keep more",
                self.path,
                self.max_messages,
                self.max_bytes,
                self._dropped,
            )

    def _drop_oldest(
        self, cur: sqlite3.Cursor, depth: int, size: int, keep_from: int
    ) -> tuple[int, int, int]:
        """Delete the oldest rows until both bounds hold (never the newest row); persist the drop count."""
        victims: list[int] = []
        # Stream the oldest rows and stop early: when full, each append drops ~1 row, not a table scan.
        scan = self._conn.execute("SELECT id, size FROM outbox ORDER BY id")
        for row_id, row_size in scan:
            if (depth <= self.max_messages and size <= self.max_bytes) or row_id >= keep_from:
                break
            victims.append(row_id)
            depth -= 1
            size -= row_size
        scan.close()
        if victims:
            cur.executemany("DELETE FROM outbox WHERE id = ?", [(v,) for v in victims])
            cur.execute(
                "INSERT INTO counters (name, value) VALUES ('dropped', ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (len(victims),),
            )
        return depth, size, len(victims)

    def ack(self, row_id: int) -> None:
        """The broker has the message: forget it. Unknown ids (already acked or dropped) are ignored."""
        self.ack_many([row_id])

    def ack_many(self, row_ids: Iterable[int]) -> None:
        """Acknowledge several rows in one transaction (paho's acks come in bursts under load)."""
        params = [(int(i),) for i in row_ids]
        if not params:
            return
        with self._lock:
            self._check_open()
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                removed = 0
                freed = 0
                cur = conn.cursor()
                for param in params:
                    got = cur.execute("DELETE FROM outbox WHERE id = ? RETURNING size", param).fetchone()
                    if got is not None:
                        removed += 1
                        freed += int(got[0])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._depth -= removed
            self._bytes -= freed

    def next_boot(self) -> int:
        """This start's boot number: the last one + 1, committed before it is used (1 on a new device).
        A seq jump between two boots is numbers reserved and never used; a gap within one boot is a loss."""
        with self._lock:
            self._check_open()
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute(
                        "INSERT INTO counters (name, value) VALUES ('boot', 1) "
                        "ON CONFLICT(name) DO UPDATE SET value = value + 1"
                    )
                    boot = int(conn.execute("SELECT value FROM counters WHERE name = 'boot'").fetchone()[0])
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if is_disk_full(exc):
                    raise StorageFullError(
                        f"state_dir: the file system of {self.path.parent} is full ({exc}); free space there "
                        "(the service starts again by itself)"
                    ) from None
                raise
            return boot

    # -- readers -------------------------------------------------------------------------------------------
    def pending(self, limit: int = 100, after_id: int = 0) -> list[OutboxMessage]:
        """Up to ``limit`` unacknowledged rows with id > ``after_id``, in id (= seq) order."""
        with self._lock:
            self._check_open()
            rows = self._conn.execute(
                "SELECT id, topic, payload, qos FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (int(after_id), int(limit)),
            ).fetchall()
        return [OutboxMessage(int(i), t, bytes(p), int(q)) for i, t, p, q in rows]

    def depth(self) -> int:
        """Rows waiting for an acknowledgement."""
        return self._depth

    def size_bytes(self) -> int:
        """Payload bytes waiting for an acknowledgement."""
        return self._bytes

    @property
    def dropped(self) -> int:
        """Rows deleted unacknowledged because the outbox was full (since the database was created)."""
        return self._dropped

    def stats(self) -> dict[str, int]:
        """The ``outbox`` object of the stats payload."""
        return {"depth": self._depth, "bytes": self._bytes, "dropped": self._dropped}

    def close(self) -> None:
        """Close the database (idempotent). Pending rows stay for the next start."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"outbox {self.path} is closed")

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SeqCounter:
    """Strictly increasing sequence numbers per pipeline, across restarts and SIGKILL.

    A block of numbers is reserved (committed to the database) before any of it is handed out, so a crash can
    only skip numbers, never repeat them. Subscribers de-duplicate on ``seq``; gaps are harmless.
    """

    def __init__(self, database: Path | str | Outbox, pipeline: str, block: int = SEQ_BLOCK):
        if block < 1:
            raise ValueError("block must be >= 1")
        self.pipeline = pipeline
        self._block = block
        self._lock = threading.Lock()
        path = database.path if isinstance(database, Outbox) else Path(database)
        # Its own connection, FULL (not NORMAL): a reservation is one commit per `block` numbers, and it must
        # survive a power cut too, or numbers already published could be handed out again.
        self._conn = _connect(path, synchronous="FULL")
        self._next = 0
        self._limit = 0  # numbers in [_next, _limit) are reserved and unused

    def next(self) -> int:
        """The next number (>= 1) for this pipeline."""
        with self._lock:
            if self._next >= self._limit:
                self._reserve()
            value = self._next
            self._next += 1
            return value

    def _reserve(self) -> None:
        try:
            self._reserve_block()
        except sqlite3.OperationalError as exc:
            if is_disk_full(exc):
                # no durable reservation, no number: handing one out could repeat it after a crash
                raise StorageFullError(f"cannot reserve seq numbers: the disk is full ({exc})") from None
            raise

    def _reserve_block(self) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT reserved_until FROM seq_reservations WHERE pipeline = ?", (self.pipeline,)
            ).fetchone()
            start = int(row[0]) if row else 1
            floor = conn.execute("SELECT value FROM counters WHERE name = 'seq_floor'").fetchone()
            if floor is not None:
                start = max(start, int(floor[0]))
            limit = start + self._block
            conn.execute(
                "INSERT INTO seq_reservations (pipeline, reserved_until) VALUES (?, ?) "
                "ON CONFLICT(pipeline) DO UPDATE SET reserved_until = excluded.reserved_until",
                (self.pipeline, limit),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._next, self._limit = start, limit

    def close(self) -> None:
        """Close its connection (again: a no-op). Unused reserved numbers are skipped next time."""
        with self._lock:
            self._conn.close()
