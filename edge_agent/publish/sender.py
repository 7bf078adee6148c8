"""The outbox sender: results handed in -> outbox (durable) -> paho, in id (= seq) order, within a window.

``publish_result`` appends to an in-memory list and returns; the sender thread writes what has arrived to
the outbox in one transaction (durable from then on: ``wait_stored``), then hands pending rows to paho, at
most ``window`` unacknowledged at a time, remembering mid -> row id. The PUBACK (``acknowledged``) marks the
row acked; the sender deletes acked rows in batches. On every connect all pending rows are replayed from
the outbox (the connection dropped paho's in-memory queue), so the outbox is the single source of truth
(a duplicate of an in-flight message, same seq, is possible: that is QoS 1).

Mids belong to a connection generation: a mid handed out on a connection that has since been replaced is
*stale*; its late PUBACK (if any) is absorbed so the mid cannot acknowledge a different message later.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from edge_agent.publish.connection import MqttConnection
from edge_agent.publish.outbox import Outbox

log = logging.getLogger(__name__)

# Commit acks in batches of at most this many rows (one SQLite transaction each).
_ACK_BATCH = 500
# Acknowledged rows are deleted together: once this many are waiting, or the oldest has waited _ACK_DELAY_S,
# or someone waits for the outbox to empty: one write transaction per ~64 results instead of one per PUBACK
# (flash wear, CPU). A crash in between only means those rows are sent again after the restart (QoS 1 is
# at-least-once anyway).
_ACK_MIN = 64
_ACK_DELAY_S = 0.05
# Rows read from the outbox per query while sending.
_SEND_BATCH = 200
# Results handed in but not yet in the outbox; past this the pipeline waits (only a stalled disk gets here).
_INCOMING_MAX = 10_000
# While results flow faster than one per linger (``mqtt.linger_ms``), they are stored (and sent) together, at
# most once per linger: one wake-up of the sender and one SQLite transaction for several results, instead of
# one per result (each wake-up takes the GIL from an inference thread). A result that comes after a quiet
# spell is stored at once.
_STORE_BATCH = 64  # ... or as soon as this many are waiting


class OutboxSender:
    """The connection's delivery tracker (``MqttConnection.track_deliveries``) and the sender thread."""

    def __init__(self, connection: MqttConnection, outbox: Outbox, max_inflight: int, linger_s: float = 0.0):
        self.connection = connection
        self.linger_s = linger_s
        self.outbox = outbox
        self.max_inflight = max_inflight
        self._window = max_inflight
        self._cond = threading.Condition()
        self._inflight: dict[int, int | None] = {}  # mid -> outbox row id (None: not an outbox row)
        self._inflight_rows = 0
        self._early: set[int] = set()  # mids whose PUBACK came before the sending thread recorded them
        self._acked_rows: list[int] = []  # PUBACKed, not yet deleted from the outbox
        self._first_ack_at = 0.0  # when the oldest of _acked_rows came
        self._flushing = 0  # threads in flush(): delete acked rows at once
        self._incoming: list[tuple[str, bytes, int]] = []  # QoS >= 1 results not yet in the outbox
        self._store_after = 0.0  # the next store of a result flow waits until then (linger_s)
        self._wakes_at = math.inf  # when the waiting sender wakes by itself (inf: only when notified)
        # Taken from _incoming and being written: in neither _incoming nor the outbox yet, so everyone who
        # waits for "stored" or "empty" counts these too (else a flush can end with a result in hand).
        self._storing = 0
        self._cursor = 0  # highest row id handed to paho on this connection
        self._gen = 0  # the connection's generation; a send from an older one is stale
        self._more = True  # the outbox may hold rows past the cursor
        self._appends = 0
        self._connected = False
        self._exit = False
        self._thread: threading.Thread | None = None
        self.published = 0  # result messages handed to paho (replays included)
        self.acked = 0  # result messages acknowledged by the broker
        self.rejected = 0  # MQTT 5 PUBACKs with a failure reason code (kept in the outbox)
        connection.track_deliveries(self)

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mqtt-sender", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread once acked rows are deleted; keep whatever it did not store for the next start."""
        with self._cond:
            self._connected = False
            self._exit = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        if not self.alive():
            self.store_incoming()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def has_incoming(self) -> bool:
        """Results handed in and not yet in the outbox (waiting, or being written right now)."""
        with self._cond:
            return self._not_stored()

    def _not_stored(self) -> bool:
        """(holding _cond)"""
        return bool(self._incoming) or self._storing > 0

    def wait_stored(self, timeout: float) -> bool:
        """Wait until every result handed in so far is in the outbox (durable); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._not_stored():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.alive():
                    return False
                self._cond.wait(min(remaining, 0.5))
        return True

    def flush(self, timeout: float) -> bool:
        """Wait until every outbox row is acknowledged and deleted; False when ``timeout`` s passed first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._not_stored() or self.outbox.depth() > 0 or self._acked_rows:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(min(remaining, 0.5))
            finally:
                self._flushing -= 1
        return True

    # -- handing in ----------------------------------------------------------------------------------------
    def publish_result(self, topic: str, payload: bytes, qos: int) -> None:
        """Hand in a QoS >= 1 result: stored by the sender thread (with whatever else arrived meanwhile, in
        one transaction) before it is sent, so the caller, the inference thread, never waits for SQLite."""
        with self._cond:
            while len(self._incoming) >= _INCOMING_MAX and not self._exit and self.alive():
                self._cond.wait(0.5)  # the outbox cannot keep up (a very slow disk): slow the pipeline down
            self._incoming.append((topic, payload, qos))
            waiting = len(self._incoming)
            if (waiting == 1 and self._wakes_at > self._store_after) or waiting == _STORE_BATCH:
                self._cond.notify_all()  # else the sender wakes in time by itself: it stores them together

    def store_incoming(self) -> bool:
        """Write the results handed in so far to the outbox, in order, in one transaction (sender thread,
        or ``stop`` once the sender has ended). False when the outbox refused them (kept for a retry)."""
        with self._cond:
            items, self._incoming = self._incoming, []
            self._storing += len(items)
            if items:
                self._store_after = time.monotonic() + self.linger_s
        if not items:
            return True
        try:
            self.outbox.append_many(items)
        except Exception as exc:  # disk full, read-only, closed: keep them in memory and say so
            with self._cond:
                self._incoming[:0] = items
                self._storing -= len(items)
            self.connection.report_error(f"cannot write results to the outbox {self.outbox.path}: {exc}")
            return False
        with self._cond:
            self._storing -= len(items)
            self._appends += 1
            self._more = True
            self._cond.notify_all()
        return True

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {"published": self.published, "acked": self.acked, "inflight": self._inflight_rows}

    # -- delivery tracking (called by the connection, mostly on paho's network thread) ---------------------
    def session_started(self, generation: int, receive_maximum: int | None) -> None:
        # MQTT 5: never have more unacknowledged messages than the broker's Receive Maximum (it would close
        # the connection); keep room for the retained status messages.
        window = (
            self.max_inflight
            if receive_maximum is None
            else max(1, min(self.max_inflight, receive_maximum - 2))
        )
        with self._cond:
            self._window = window
            self._inflight.clear()
            self._inflight_rows = 0
            self._early.clear()
            self._cursor = 0
            self._more = True
            self._gen = generation
            self._connected = True
            self._cond.notify_all()
        pending = self.outbox.depth()
        log.info("connected to MQTT broker %s; %d results pending", self.connection.broker, pending)

    def session_ended(self, generation: int) -> None:
        with self._cond:
            self._connected = False
            self._inflight.clear()
            self._inflight_rows = 0
            self._early.clear()
            self._gen = generation
            self._cond.notify_all()

    def claim(self, mid: int, row_id: int | None, generation: int, *, stale: bool = False) -> None:
        """Record who owns ``mid`` after ``publish`` returned; the PUBACK may already have arrived.

        ``stale``: the message will never count (queued by paho while the connection was down, dropped on
        the next connect), like one sent on a generation that has been replaced: absorb its late PUBACK.
        """
        with self._cond:
            current = not stale and generation == self._gen
            if mid in self._early:
                self._early.discard(mid)
                if row_id is not None:
                    self._add_ack(row_id)
            elif current:
                self._inflight[mid] = row_id
                if row_id is not None:
                    self._inflight_rows += 1
            else:
                self._inflight[mid] = None
            if row_id is not None and current:
                self._cursor = max(self._cursor, row_id)

    def acknowledged(self, mid: int, reason_code: Any) -> None:
        with self._cond:
            if mid not in self._inflight:
                self._early.add(mid)
                return
            row_id = self._inflight.pop(mid)
            if row_id is None:
                return
            self._inflight_rows -= 1
            if reason_code.is_failure:  # MQTT 5 only: the broker refused this message; keep it, count it
                self.rejected += 1
                self.connection.report_error(
                    f"broker {self.connection.broker} rejected a result (outbox row {row_id}): {reason_code}",
                    quiet=True,
                )
            else:
                self._add_ack(row_id)
            if self._inflight_rows == self._window - 1 and self._more:
                self._cond.notify_all()  # the window was full: the sender may go on

    def _add_ack(self, row_id: int) -> None:
        """(holding _cond) Note an acknowledged row; wake the sender only when it has something to do: the
        first ack (so it times the delay), a full batch, or a flush waiting."""
        if not self._acked_rows:
            self._first_ack_at = time.monotonic()
        self._acked_rows.append(row_id)
        if len(self._acked_rows) in (1, _ACK_MIN) or self._flushing:
            self._cond.notify_all()

    def _acks_due_in(self) -> float | None:
        """(holding _cond) Seconds until the acked rows are due for deletion (<= 0: now); None: none."""
        if not self._acked_rows:
            return None
        if len(self._acked_rows) >= _ACK_MIN or self._flushing or self._exit:
            return 0.0
        return self._first_ack_at + _ACK_DELAY_S - time.monotonic()

    # -- sender thread -------------------------------------------------------------------------------------
    def _incoming_due(self) -> bool:
        """(holding _cond) Store the results handed in now: the linger is over, enough are waiting, or
        someone waits for them (flush, stop)."""
        return bool(self._incoming) and (
            time.monotonic() >= self._store_after
            or len(self._incoming) >= _STORE_BATCH
            or self._flushing > 0
            or self._exit
        )

    def _wake_at(self, now: float, acks_due: float | None) -> float:
        """(holding _cond) When the idle sender wakes by itself: when acks are due, and, in a result flow (a
        store less than a linger ago), when the linger ends: results that come meanwhile need no wake-up."""
        wake = math.inf if acks_due is None else now + acks_due
        return min(wake, self._store_after) if self._store_after > now else wake

    def _run(self) -> None:
        """Delete acked rows in batches, and hand pending rows to paho in id order within the window."""
        while True:
            with self._cond:
                while True:
                    due = self._acks_due_in()
                    if (
                        (due is not None and due <= 0)
                        or self._incoming_due()
                        or self._exit
                        or (self._connected and self._more and self._inflight_rows < self._window)
                    ):
                        break
                    now = time.monotonic()
                    self._wakes_at = self._wake_at(now, due)
                    self._cond.wait(None if self._wakes_at == math.inf else max(0.0, self._wakes_at - now))
                    self._wakes_at = math.inf
                acks: list[int] = []
                if due is not None and due <= 0:
                    acks = self._acked_rows[:_ACK_BATCH]
                    del self._acked_rows[:_ACK_BATCH]
                    self._first_ack_at = time.monotonic()
                exiting = self._exit
                incoming = bool(self._incoming)
            if incoming and not self.store_incoming():
                if exiting:
                    return  # stop() tries once more after the join
                time.sleep(1.0)
                continue
            if exiting:
                if acks:
                    self._ack(acks)
                if not self._acked_rows and not self._incoming:
                    return
                continue
            with self._cond:  # after storing: the rows just written count, unless the window is full
                send = self._connected and self._more and self._inflight_rows < self._window
                gen, cursor, appends = self._gen, self._cursor, self._appends
                room = self._window - self._inflight_rows
            if send:
                try:
                    self._send(gen, cursor, appends, min(room, _SEND_BATCH))
                except Exception as exc:  # keep the thread alive whatever happens; say so and retry
                    log.exception("sending results failed")
                    self.connection.report_error(f"sending results failed: {exc}")
                    time.sleep(1.0)
            if acks:  # after sending: new results go out first, deleting delivered ones can wait
                self._ack(acks)

    def _ack(self, acks: list[int]) -> None:
        try:
            self.outbox.ack_many(acks)
        except Exception as exc:  # the outbox is closed or broken: the rows are resent next time (same seq)
            log.error("could not delete %d acknowledged rows from the outbox: %s", len(acks), exc)
        with self._cond:
            self.acked += len(acks)
            self._cond.notify_all()

    def _send(self, gen: int, cursor: int, appends: int, limit: int) -> None:
        import paho.mqtt.client as mqtt

        try:
            rows = self.outbox.pending(limit=limit, after_id=cursor)
        except Exception as exc:
            self.connection.report_error(f"cannot read the outbox {self.outbox.path}: {exc}")
            time.sleep(1.0)
            return
        if len(rows) < limit:
            with self._cond:
                if gen == self._gen and appends == self._appends:
                    self._more = False
        client = self.connection.client
        for row in rows:
            if gen != self._gen or not self._connected:
                return
            info = client.publish(row.topic, row.payload, qos=row.qos)
            if info.rc == mqtt.MQTT_ERR_NO_CONN:
                self.claim(info.mid, None, gen, stale=True)  # queued in paho, dropped on reconnect
                return
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self.connection.report_error(f"paho refused to queue a result: {mqtt.error_string(info.rc)}")
                with self._cond:
                    self._more = True
                time.sleep(0.1)
                return
            self.claim(info.mid, row.id, gen)
            self.published += 1
