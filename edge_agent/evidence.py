"""Local evidence: the frames that triggered a published result, kept as JPEG files on the device.

They never leave the device (nothing publishes them); an operator fetches them over ssh when a result needs
explaining. The folder is bounded by count, total bytes and age; the oldest files go first, and a file goes
at its age even while no frame is saved. A store that cannot save (a full or read-only card) says so once in
the log, not once a frame, and its counters and ``last_error`` show in the stats until saving works again.

The pipeline hands frames over with ``keep``: it masks a copy on the inference thread, and a writer thread
of the store's own encodes and writes it. Encoding a full frame as JPEG costs 1.3 ms at 640x480 and 4.4 ms
at 1280x720 here (several times that on a Pi), and on the inference thread every kept frame delayed the
next invoke by it: keeping every result's frame took 13 % (640x480) and 28 % (1280x720) of the results a
second (``scripts/bench_evidence.py``). Encoding and inference now overlap; a card slower than both still
sets the pace, and every frame is kept.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_agent.affinity import pin_this_thread, usable_cpus
from edge_agent.config import EvidenceConfig
from edge_agent.extras import OPENCV

if TYPE_CHECKING:
    from edge_agent.processing.masks import FrameMask

log = logging.getLogger(__name__)

QUEUE_FRAMES = 4  # frames waiting for the writer: 3.7 MB at 640x480, 25 MB at 1920x1080
STUCK_S = 2.0  # a writer that finished no frame for this long is stuck: frames are dropped, not waited for
CLOSE_TIMEOUT_S = 10.0  # a pipeline's end waits this long for its queued frames to be written


class EvidenceStore:
    """JPEG files named ``<seq>-<label>.jpg`` in one folder per pipeline, pruned on every save."""

    def __init__(self, folder: Path, cfg: EvidenceConfig) -> None:
        self.folder = folder
        self.cfg = cfg
        self.saved = 0
        self.failed = 0  # frames that were to be kept and were not (masking, encoding or writing failed)
        self.last_error: str | None = None  # the failure of the last frame; None once one is saved again
        self._failing_kind = ""  # what failed last (mask, encode, write: why), to log each new kind once
        self._failing_since = 0  # ``failed`` when the current run of failures began (for the recovery line)
        self._lock = threading.Lock()
        self._files: deque[tuple[float, int, Path]] = deque()  # (mtime, size, path), oldest first
        self._bytes = 0
        self._undeleted = 0  # files pruning could not delete since the last that it could (logged once)
        self._queue: queue.Queue[tuple[np.ndarray, int, str | None] | None] = queue.Queue(QUEUE_FRAMES)
        self._writer: threading.Thread | None = None  # started at the first frame kept
        self._progress = time.monotonic()  # when the writer last finished a frame (or started)
        # the writer runs where its creator does (the daemon's main thread: off the inference CPUs), not
        # where the first frame comes from (the inference thread, pinned to its own CPUs)
        self._writer_cpus = usable_cpus()
        problem = self._open_folder()
        self._open = problem is None
        if problem is not None:
            self.last_error, self._failing_kind = problem, problem
            log.warning("evidence: %s", problem)

    def _open_folder(self) -> str | None:
        """Make the folder and learn what an earlier run left in it (so the bounds hold across restarts); or
        why it cannot be made (a root-owned parent from a run by hand as root, a file in its place): the
        results go on without evidence meanwhile, and each frame to keep tries again."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o750)
        except OSError as exc:
            return (
                f"cannot create the folder {self.folder} ({exc.strerror}): frames are not kept until it "
                "can be; fix the owner of its parent (the service's user writes there) or move what is there"
            )
        for tmp in self.folder.glob("*.tmp"):  # a write cut short by a kill or a full card: never kept
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        entries = []
        for p in self.folder.glob("*.jpg"):
            try:
                st = p.stat()
            except OSError:
                continue
            entries.append((st.st_mtime, st.st_size, p))
        entries.sort()
        with self._lock:
            self._files = deque(entries)
            self._bytes = sum(e[1] for e in entries)
            self._prune(time.time())
        return None

    def wants(self, label: str | None, score: float | None) -> bool:
        if not self.cfg.enabled:
            return False
        if self.cfg.labels is not None and label not in self.cfg.labels:
            return False
        return not (self.cfg.min_score is not None and (score is None or score < self.cfg.min_score))

    def keep(self, frame_bgr: np.ndarray, seq: int, label: str | None, mask: FrameMask | None = None) -> bool:
        """Hand a frame to the writer thread, masked (``mask``) in a copy of its own, so the caller may
        reuse its buffer at once. With ``QUEUE_FRAMES`` waiting already, a slow card makes the caller wait
        for room (the pipeline runs at the card's pace and every frame is kept, as when it wrote them
        itself); a stuck one (no frame written for ``STUCK_S``) costs frames, not results. False when not
        taken, counted as not stored: the mask failed (fail closed), or the writer is stuck."""
        try:
            copy = mask.apply(frame_bgr) if mask is not None else frame_bgr.copy()
        except Exception as exc:  # any failure: the frame is not stored
            self._failed(f"could not mask frame {seq}, not stored: {exc}", "mask")
            return False
        if self._writer is None:
            self._progress = time.monotonic()
            self._writer = threading.Thread(
                target=self._write_kept, name=f"evidence-{self.folder.name}", daemon=True
            )
            self._writer.start()
        try:
            self._queue.put_nowait((copy, seq, label))
        except queue.Full:
            wait = STUCK_S - (time.monotonic() - self._progress)
            try:
                if wait <= 0:
                    raise queue.Full from None
                self._queue.put((copy, seq, label), timeout=wait)
            except queue.Full:
                why = f"frame {seq} not stored: nothing written for {STUCK_S:g} s (a stuck card?)"
                self._failed(why, "stuck")
                return False
        return True

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Write the frames kept so far and stop the writer (a pipeline's end: its last frames are stored
        too, before the final stats)."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        with contextlib.suppress(queue.Full):  # a writer stuck on the card: the join below gives up too
            self._queue.put(None, timeout=timeout)  # after the frames in the queue
        writer.join(timeout)
        if writer.is_alive():
            log.warning(
                "evidence: %s: frames still being written after %g s; not waiting", self.folder, timeout
            )

    def _write_kept(self) -> None:
        if self._writer_cpus:
            pin_this_thread(self._writer_cpus)
        while (item := self._queue.get()) is not None:
            frame, seq, label = item
            try:
                self.save(frame, seq, label)  # masked already
            except Exception as exc:  # a bug must not end the writer and leave later frames unwritten
                log.exception("evidence: frame %d not stored", seq)
                self._failed(f"frame {seq} not stored: {exc!r}", "bug")
            self._progress = time.monotonic()

    def save(
        self, frame_bgr: np.ndarray, seq: int, label: str | None, mask: FrameMask | None = None
    ) -> Path | None:
        """Write the frame now, on this thread, with the privacy ``mask`` applied right before encoding;
        None (and ``last_error``) when masking, encoding or writing failed: evidence is best effort and must
        never stop the results, but a frame that could not be masked is never written (fail closed)."""
        cv2 = OPENCV.load()
        if not self._open:
            problem = self._open_folder()
            if problem is not None:
                return self._failed(problem, problem)
            self._open = True
        if mask is not None:
            try:
                frame_bgr = mask.apply(frame_bgr)
            except Exception as exc:  # any failure: the frame is not stored
                return self._failed(f"could not mask frame {seq}, not stored: {exc}", "mask")
        try:
            ok, buf = cv2.imencode(".jpg", frame_bgr, [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality])
        except cv2.error as exc:  # a frame JPEG cannot hold (a step's odd output): raised, not returned
            ok, why = False, f": {getattr(exc, 'err', None) or exc}"
        else:
            why = ""
        if not ok:
            return self._failed(f"could not encode frame {seq} as JPEG{why}", "encode")
        safe_label = "".join(c if c.isalnum() or c in "-_." else "_" for c in (label or "result"))[:40]
        path = self.folder / f"{seq:012d}-{safe_label}.jpg"
        data = buf.tobytes()
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_bytes(data)
            tmp.replace(path)
        except OSError as exc:
            with contextlib.suppress(OSError):  # a full card leaves part of a frame: not kept, nor left there
                tmp.unlink(missing_ok=True)
            return self._failed(f"could not write {path}: {exc.strerror}", f"write: {exc.strerror}")
        now = time.time()
        with self._lock:
            self._files.append((now, len(data), path))
            self._bytes += len(data)
            self.saved += 1
            self._prune(now)
            if self.last_error is not None:
                log.info(
                    "evidence: saving %s again after %d frame(s) not stored",
                    self.folder,
                    self.failed - self._failing_since,
                )
                self.last_error = None
        return path

    def _failed(self, message: str, kind: str) -> None:
        """Count a frame not stored; log the first of a run of failures and each change of its kind (a full
        card fails every frame the same way: one line, not one per frame)."""
        with self._lock:
            previous, self.last_error = self.last_error, message
            if previous is None:
                self._failing_since = self.failed
            self.failed += 1
            if previous is None or kind != self._failing_kind:
                log.warning("evidence: %s", message)
            self._failing_kind = kind
        return None

    def stats(self) -> dict[str, int | str | None]:
        """The pipeline's ``evidence`` entry in the stats payload."""
        with self._lock:
            return {
                "files": len(self._files),
                "bytes": self._bytes,
                "saved": self.saved,
                "failed": self.failed,
                "last_error": self.last_error,
            }

    def expire(self, now: float | None = None) -> None:
        """Delete the files older than ``max_age_s`` though no frame is saved: a quiet camera's last event
        must not outlive the age it was promised (the daemon's main loop calls this each tick; it looks at
        the oldest file only, unless that one is due)."""
        with self._lock:
            self._prune(time.time() if now is None else now)

    def _prune(self, now: float) -> None:
        cfg = self.cfg
        while self._files and (
            len(self._files) > cfg.max_files
            or self._bytes > cfg.max_bytes
            or now - self._files[0][0] > cfg.max_age_s
        ):
            _, size, path = self._files.popleft()
            self._bytes -= size
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:  # left, and no longer counted: the bounds go on holding for the others
                if not self._undeleted:  # a card gone read-only fails every delete: one line, not one a file
                    log.warning(
                        "evidence: could not delete %s: %s; the next start tries again", path, exc.strerror
                    )
                self._undeleted += 1
                continue
            if self._undeleted:
                log.info(
                    "evidence: deleting in %s again; %d file(s) could not be", self.folder, self._undeleted
                )
                self._undeleted = 0

    @property
    def count(self) -> int:
        return len(self._files)

    @property
    def total_bytes(self) -> int:
        return self._bytes
