"""Outbox and SeqCounter: order, acks, bounds with counted drops, durability across reopen and SIGKILL."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from edge_agent.errors import ConfigError
from edge_agent.publish.outbox import Outbox, SeqCounter
from tests.storage import fill, small_tmpfs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outbox.db"


def refuse(conn: sqlite3.Connection, statement: str) -> None:
    """Make ``statement`` (e.g. ``UPDATE ON counters``) fail on this connection only: a fault injected in
    the middle of a transaction, where a full disk would make SQLite roll back by itself."""
    conn.execute(
        f"CREATE TEMP TRIGGER refuse BEFORE {statement} BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    )


def test_append_pending_ack_in_id_order(db: Path) -> None:
    with Outbox(db) as ob:
        ids = [ob.append("t/a", f"m{i}".encode(), 1) for i in range(5)]
        assert ids == sorted(ids) and len(set(ids)) == 5
        assert ob.depth() == 5
        assert ob.size_bytes() == sum(len(f"m{i}") for i in range(5))
        pending = ob.pending(limit=10)
        assert [m.id for m in pending] == ids
        assert [m.payload for m in pending] == [f"m{i}".encode() for i in range(5)]
        assert all(m.topic == "t/a" and m.qos == 1 for m in pending)
        assert [m.id for m in ob.pending(limit=2, after_id=ids[1])] == ids[2:4]

        ob.ack(ids[2])
        ob.ack(ids[2])  # twice: ignored
        ob.ack(999_999)  # unknown: ignored
        assert [m.id for m in ob.pending()] == [ids[0], ids[1], ids[3], ids[4]]
        assert ob.depth() == 4
        ob.ack_many([ids[0], ids[4]])
        assert [m.id for m in ob.pending()] == [ids[1], ids[3]]
        assert ob.size_bytes() == 4


def test_append_many_is_one_batch_in_order(db: Path) -> None:
    with Outbox(db) as ob:
        ids = ob.append_many([("t", b"x" * i, 1) for i in range(1, 101)])
        assert len(ids) == 100 and ids == sorted(ids)
        assert [len(m.payload) for m in ob.pending(limit=200)] == list(range(1, 101))
        assert ob.append_many([]) == []


def test_ids_never_reused_after_full_drain(db: Path) -> None:
    """The publisher's cursor relies on ids only growing, also after the table was emptied and reopened."""
    with Outbox(db) as ob:
        first = ob.append_many([("t", b"a", 1), ("t", b"b", 1)])
        ob.ack_many(first)
        assert ob.depth() == 0
    with Outbox(db) as ob:
        assert ob.append("t", b"c", 1) > max(first)


def test_count_bound_drops_oldest_and_counts(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="edge_agent.publish.outbox"), Outbox(db, max_messages=10) as ob:
        ids = [ob.append("t", str(i).encode(), 1) for i in range(25)]
        assert ob.depth() == 10
        assert ob.dropped == 15
        assert [m.id for m in ob.pending(limit=100)] == ids[-10:]
        more = ob.append_many([("t", b"x", 1)] * 30)  # a batch larger than the bound keeps its newest rows
        assert ob.depth() == 10
        assert [m.id for m in ob.pending(limit=100)] == more[-10:]
        assert ob.dropped == 45
        assert ob.stats() == {"depth": 10, "bytes": 10, "dropped": 45}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "is full (max_messages=10" in warnings[0]  # once, not per dropped row
    with Outbox(db, max_messages=10) as ob:  # the drop count is persisted
        assert ob.dropped == 45
        assert ob.depth() == 10


def test_byte_bound_drops_oldest(db: Path) -> None:
    with Outbox(db, max_messages=1000, max_bytes=1000) as ob:
        for _ in range(10):
            ob.append("t", b"x" * 300, 1)
        assert ob.size_bytes() <= 1000
        assert ob.depth() == 3
        assert ob.dropped == 7
        big = ob.append("t", b"y" * 5000, 1)  # larger than the bound alone: kept (never drop the newest)
        assert [m.id for m in ob.pending()] == [big]
        assert ob.dropped == 10


def test_reopen_keeps_rows_and_bytes(db: Path) -> None:
    ob = Outbox(db)
    ids = ob.append_many([("a/b", b"one", 1), ("a/b", b"two", 2)])
    ob.close()
    ob.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        ob.append("a", b"x", 1)
    with Outbox(db) as again:
        assert again.depth() == 2 and again.size_bytes() == 6
        assert [(m.id, m.payload, m.qos) for m in again.pending()] == [
            (ids[0], b"one", 1),
            (ids[1], b"two", 2),
        ]


CHILD = """
import os, sys, time
from pathlib import Path
from edge_agent.publish.outbox import Outbox, SeqCounter
ob = Outbox(Path(sys.argv[1]))
seq = SeqCounter(ob, "door")
for i in range(int(sys.argv[2])):
    ob.append("edge/dev/door/result", str(seq.next()).encode(), 1)
print(seq.next(), flush=True)   # the last number handed out before the kill
time.sleep(60)                  # killed here, with the connection open
"""


def _append_then_sigkill(db: Path, n: int) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), str(n)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.strip(), "child printed nothing"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    return int(line)


def test_rows_and_seq_survive_sigkill(db: Path) -> None:
    last = _append_then_sigkill(db, 50)
    with Outbox(db) as ob:
        rows = ob.pending(limit=100)
        assert len(rows) == 50
        seqs = [int(m.payload) for m in rows]
        assert seqs == sorted(seqs) and len(set(seqs)) == 50
        seq = SeqCounter(ob, "door")
        assert seq.next() > last  # never re-issued, even though the child never closed anything
    last2 = _append_then_sigkill(db, 10)
    assert last2 > last
    with Outbox(db) as ob:
        assert ob.depth() == 60


def test_seq_strictly_increasing_across_reopen_and_per_pipeline(db: Path) -> None:
    seen: list[int] = []
    for _ in range(3):
        counter = SeqCounter(db, "cam", block=7)
        seen += [counter.next() for _ in range(10)]
        counter.close()
    assert all(b > a for a, b in itertools.pairwise(seen))
    other = SeqCounter(db, "sensor", block=7)
    assert other.next() == 1  # independent per pipeline
    other.close()


def test_seq_shares_the_outbox_file(db: Path) -> None:
    with Outbox(db) as ob:
        a = SeqCounter(ob, "p")
        first = a.next()
        ob.append("t", b"x", 1)
        assert a.next() == first + 1
        a.close()


def test_concurrent_append_and_ack(db: Path) -> None:
    """The inference thread appends while the network thread acks: no lost rows, counters exact."""
    n = 2000
    acked: list[int] = []
    with Outbox(db) as ob:
        done = threading.Event()

        def acker() -> None:
            after = 0
            while not (done.is_set() and ob.depth() == 0):
                rows = ob.pending(limit=50, after_id=after)
                if rows:
                    ob.ack_many([m.id for m in rows])
                    acked.extend(m.id for m in rows)
                    after = rows[-1].id
                else:
                    time.sleep(0.001)

        t = threading.Thread(target=acker)
        t.start()
        ids = [ob.append("t", b"p", 1) for _ in range(n)]
        done.set()
        t.join(timeout=30)
        assert not t.is_alive()
        assert acked == ids
        assert ob.depth() == 0 and ob.size_bytes() == 0


def test_unwritable_state_dir_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="outbox database"):
        Outbox(blocker / "outbox.db")


def test_garbage_database_is_moved_aside_and_a_fresh_one_used(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not sqlite" * 100)
    with Outbox(db) as box:
        assert box.append("t", b"x", 1) >= 1 and box.depth() == 1
    aside = list(db.parent.glob(db.name + ".corrupt-*"))
    assert [p.read_bytes()[:18] for p in aside] == [b"this is not sqlite"]  # kept for a human, untouched
    assert "damaged" in caplog.text and aside[0].name in caplog.text


def test_truncated_database_is_moved_aside_and_seq_never_repeats(db: Path) -> None:
    with Outbox(db) as box:
        for _ in range(2000):
            box.append("t", b"p" * 200, 1)
    counter = SeqCounter(db, "cam", block=10)
    handed_out = [counter.next() for _ in range(25)]
    counter.close()
    with db.open("r+b") as f:  # a power cut in the middle of the file's life
        f.truncate(db.stat().st_size // 3)
    for part in db.parent.glob(db.name + "-*"):
        part.unlink()
    with Outbox(db) as box:
        assert box.depth() == 0
        after = SeqCounter(box, "cam")
        assert after.next() > max(handed_out)
        after.close()
    assert len(list(db.parent.glob(db.name + ".corrupt-*"))) == 1


def test_full_file_system_drops_and_counts_then_recovers_keeping_what_was_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with small_tmpfs(tmp_path / "state", "2m") as state:
        box = Outbox(state / "outbox.sqlite3")
        stored = box.append_many([("t", b"early-%d" % i, 1) for i in range(50)])
        filler = fill(state)
        dropped = 0
        for _ in range(200):  # results keep coming while the disk is full
            if not box.append_many([("t", b"x" * 4096, 1)]):
                dropped += 1
        assert dropped > 0 and box.dropped >= dropped
        assert "file system is full" in caplog.text
        filler.unlink()  # room again: storing resumes by itself
        assert len(box.append_many([("t", b"late", 1)])) == 1
        assert f"storing again ({dropped} dropped while full)" in caplog.text
        assert len(box.append_many([("t", b"later", 1)])) == 1  # the drops are persisted once, not again
        payloads = [m.payload for m in box.pending(limit=1000)]
        assert [p for p in payloads if p.startswith(b"early-")] == [b"early-%d" % i for i in range(50)]
        assert payloads[-2:] == [b"late", b"later"] and len(stored) == 50
        dropped_total = box.dropped
        assert dropped_total == dropped
        filler = fill(state)  # a second episode counts its own drops
        again = sum(not box.append_many([("t", b"y" * 4096, 1)]) for _ in range(200))
        filler.unlink()
        assert len(box.append_many([("t", b"room", 1)])) == 1
        said = [r.getMessage() for r in caplog.records if "storing again" in r.getMessage()]
        assert again > 0 and said[-1].endswith(f"storing again ({again} dropped while full)")
        dropped_total = box.dropped
        assert dropped_total == dropped + again
        box.close()
        with Outbox(state / "outbox.sqlite3") as again:  # the drops were persisted once there was room
            assert again.dropped == dropped_total


def test_read_only_state_directory_is_a_clear_error(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "ro", "1m") as state:
        subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
        with pytest.raises(ConfigError, match=r"outbox.*(read-only|readonly|unable to open)"):
            Outbox(state / "outbox.sqlite3")


def test_bounds_are_exact(db: Path) -> None:
    """max_messages and max_bytes are what the outbox holds, not one less: filling it to the bound drops
    nothing, one more row drops exactly one. A bound of 1 is allowed."""
    with Outbox(db, max_messages=3, max_bytes=30) as ob:
        ob.append_many([("t", b"x" * 10, 1)] * 3)  # exactly 3 rows and 30 bytes
        assert (ob.depth(), ob.size_bytes(), ob.dropped) == (3, 30, 0)
        ob.append("t", b"y" * 10, 1)
        assert (ob.depth(), ob.size_bytes(), ob.dropped) == (3, 30, 1)
    with Outbox(db, max_messages=1) as ob:  # a smaller bound on reopen: the next append trims to it
        newest = ob.append("t", b"z", 1)
        assert [m.id for m in ob.pending()] == [newest]
    Outbox(db, max_bytes=1).close()
    for bad in ({"max_messages": 0}, {"max_bytes": 0}):
        with pytest.raises(ConfigError, match="outbox bounds must be positive"):
            Outbox(db, **bad)


def test_a_missing_state_dir_is_created(tmp_path: Path) -> None:
    with Outbox(tmp_path / "var" / "lib" / "edge-agent" / "outbox.db") as ob:
        assert ob.append("t", b"a", 1) >= 1


def test_a_failed_append_leaves_nothing_and_the_outbox_usable(db: Path) -> None:
    with Outbox(db) as ob:
        ob.append("t", b"a", 1)
        with pytest.raises(Exception, match="NOT NULL"):
            ob.append_many([("t", b"b", 1), (None, b"c", 1)])  # the second row breaks the transaction
        assert ob.depth() == 1 and [m.payload for m in ob.pending()] == [b"a"]
        ob.append("t", b"d", 1)  # the transaction was rolled back, not left open
        assert [m.payload for m in ob.pending()] == [b"a", b"d"]


def test_seq_reservations_are_fsynced_results_are_not(db: Path) -> None:
    """A seq block must survive a power cut (else numbers repeat after one): synchronous=FULL on the
    counter's own connection; results only need to survive a process crash: NORMAL (see _connect)."""
    with Outbox(db) as ob:
        assert ob._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    seq = SeqCounter(db, "cam")
    try:
        assert seq._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        seq.close()


def test_boot_number_grows_by_one_per_start_and_survives_a_damaged_database(db: Path) -> None:
    with Outbox(db) as box:
        assert [box.next_boot(), box.next_boot()] == [1, 2]
    with Outbox(db) as box:
        assert box.next_boot() == 3
    db.write_bytes(b"garbage" * 100)
    for part in db.parent.glob(db.name + "-*"):
        part.unlink()
    with Outbox(db) as box:
        assert box.next_boot() > 3  # continues above the lost counter (from the clock), never repeats


def test_seq_reservation_on_a_full_file_system_hands_out_nothing_then_recovers(tmp_path: Path) -> None:
    from edge_agent.errors import StorageFullError

    with small_tmpfs(tmp_path / "state", "1m") as state:
        counter = SeqCounter(state / "outbox.sqlite3", "cam", block=1)  # one commit per number
        first = counter.next()
        filler = fill(state)
        with pytest.raises(StorageFullError, match="cannot reserve seq numbers"):
            for _ in range(100):  # the WAL may still have a page or two of room
                counter.next()
        filler.unlink()
        assert counter.next() > first  # goes on, never repeating
        counter.close()


def test_seq_after_a_damaged_database_stays_above_a_long_lived_devices_numbers(db: Path) -> None:
    """A damaged database loses the reservations: numbering goes on from the clock (ms), which stays above
    the numbers of a device that has published 10^10 results (30 years at 10 a second)."""
    first = SeqCounter(db, "cam", block=10**10)
    first.next()
    first.close()
    counter = SeqCounter(db, "cam", block=10)
    last = counter.next()
    counter.close()
    assert last > 10**10
    db.write_bytes(b"garbage" * 100)
    for part in db.parent.glob(db.name + "-*"):
        part.unlink()
    with Outbox(db) as box:
        after = SeqCounter(box, "cam")
        assert after.next() > last
        after.close()


def test_full_and_damaged_are_told_apart_by_the_message_where_sqlite_gives_no_code() -> None:
    """Python 3.10's sqlite3 errors carry no error code: the message decides (an error made by hand has
    none either)."""
    from edge_agent.publish.outbox import _corrupt, is_disk_full

    full, locked = sqlite3.OperationalError("database or disk is full"), sqlite3.OperationalError("locked")
    malformed = sqlite3.DatabaseError("database disk image is malformed")
    not_a_db = sqlite3.DatabaseError("file is not a database")
    assert [is_disk_full(e) for e in (full, locked, malformed)] == [True, False, False]
    assert [_corrupt(e) for e in (malformed, not_a_db, full, locked)] == [True, True, False, False]


def test_an_ack_that_fails_midway_deletes_nothing_and_the_outbox_stays_usable(db: Path) -> None:
    """Acks of a burst go in one transaction: a failure on the second row (injected with a trigger on this
    connection) must roll back the first row's delete, not leave it half done or the transaction open."""
    with Outbox(db) as ob:
        first, second, third = ob.append_many([("t", b"a", 1), ("t", b"b", 1), ("t", b"c", 1)])
        refuse(ob._conn, f"DELETE ON outbox WHEN old.id = {second}")
        with pytest.raises(sqlite3.IntegrityError, match="injected failure"):
            ob.ack_many([first, second, third])
        assert not ob._conn.in_transaction
        assert [m.id for m in ob.pending()] == [first, second, third] and ob.depth() == 3
        ob._conn.execute("DROP TRIGGER refuse")
        ob.ack_many([first, third])
        assert [m.id for m in ob.pending()] == [second] and (ob.depth(), ob.size_bytes()) == (1, 1)


def test_boot_number_on_a_full_file_system_is_a_clear_error_and_rolled_back(tmp_path: Path) -> None:
    from edge_agent.errors import StorageFullError

    with small_tmpfs(tmp_path / "state", "1m") as state:
        box = Outbox(state / "outbox.sqlite3")
        before = box.next_boot()
        filler = fill(state)
        with pytest.raises(StorageFullError) as raised:
            for _ in range(200):  # the WAL may still have a page or two of room
                before = box.next_boot()
        assert str(raised.value).startswith(f"state_dir: the file system of {state} is full (")
        assert str(raised.value).endswith("free space there (the service starts again by itself)")
        assert not box._conn.in_transaction
        filler.unlink()
        assert box.next_boot() == before + 1  # the failed one was rolled back: numbers go on, none lost
        box.close()


def test_a_boot_number_that_fails_midway_is_rolled_back(db: Path) -> None:
    with Outbox(db) as ob:
        first = ob.next_boot()
        refuse(ob._conn, "UPDATE ON counters")
        with pytest.raises(sqlite3.IntegrityError, match="injected failure"):
            ob.next_boot()
        assert not ob._conn.in_transaction
        ob._conn.execute("DROP TRIGGER refuse")
        assert ob.next_boot() == first + 1


def test_a_damaged_database_is_moved_aside_with_its_wal_and_shm(
    db: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a crash the results may still be in the -wal file: it goes aside with the database (a fresh
    database must not pick up an old WAL), under one name stamped in UTC (whatever the device's zone)."""
    crashed = db.parent / "crashed"
    with Outbox(db) as ob:
        ob.append_many([("t", b"p" * 200, 1)] * 2000)  # checkpointed into the database when it closes
    with Outbox(db) as ob:
        ob.append_many([("t", b"waiting %d" % i, 1) for i in range(20)])
        crashed.mkdir()
        for part in db.parent.glob(db.name + "*"):  # the files as a SIGKILL leaves them: WAL not checkpointed
            shutil.copy(part, crashed / part.name)
    path = crashed / db.name
    wal = Path(f"{path}-wal").read_bytes()
    assert len(wal) > 0 and Path(f"{path}-shm").exists()
    with path.open("r+b") as f:  # and the database lost its end (pages the WAL does not hold)
        f.truncate(path.stat().st_size // 3)
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+05:30
    time.tzset()
    try:
        with Outbox(path) as fresh:
            assert fresh.depth() == 0
            fresh.append("t", b"new", 1)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    aside = sorted(p.name for p in crashed.glob(db.name + ".corrupt-*"))
    stamp = re.fullmatch(re.escape(db.name) + r"\.corrupt-(\d{8}T\d{6}Z)", aside[0])
    assert stamp is not None, aside
    when = datetime.strptime(stamp[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    assert abs((datetime.now(timezone.utc) - when).total_seconds()) < 60
    assert aside == [f"{db.name}.corrupt-{stamp[1]}{suffix}" for suffix in ("", "-shm", "-wal")]
    assert (crashed / f"{aside[0]}-wal").read_bytes() == wal  # kept as it was, for inspection
    assert f"moved it aside to {aside[0]}" in caplog.text


def test_a_seq_reservation_that_fails_midway_is_rolled_back(db: Path) -> None:
    counter = SeqCounter(db, "cam", block=5)
    try:
        first = [counter.next() for _ in range(5)]
        refuse(counter._conn, "UPDATE ON seq_reservations")
        with pytest.raises(sqlite3.IntegrityError, match="injected failure"):
            counter.next()
        assert not counter._conn.in_transaction
        counter._conn.execute("DROP TRIGGER refuse")
        assert counter.next() == first[-1] + 1  # no number handed out by the failed reservation
    finally:
        counter.close()
    counter.close()  # twice: a no-op


def test_drops_are_warned_at_the_first_then_every_thousandth(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="edge_agent.publish.outbox"), Outbox(db, max_messages=1) as ob:
        ob.append("t", b"a", 1)
        assert not caplog.records
        ob.append("t", b"b", 1)
        (first,) = [r.getMessage() for r in caplog.records]
        assert first == (
            f"outbox {db} is full (max_messages=1, max_bytes=268435456): "
            "dropped the oldest results, 1 so far; "
            "is the broker reachable? raise outbox.max_messages/max_bytes to keep more"
        )
        for i in range(2100):
            ob.append("t", b"%d" % i, 1)
    said = [int(re.search(r"results, (\d+) so far", r.getMessage())[1]) for r in caplog.records]
    assert said == [1, 1000, 2000]
