"""Local evidence: the frames that triggered a published result, kept as JPEG files on the device.

They never leave the device (nothing publishes them); an operator fetches them over ssh when a result needs
explaining. The folder is bounded by count, total bytes and age; the oldest files go first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_agent.config import EvidenceConfig
from edge_agent.extras import OPENCV

if TYPE_CHECKING:
    from edge_agent.processing.masks import FrameMask

log = logging.getLogger(__name__)


class EvidenceStore:
    """JPEG files named ``<seq>-<label>.jpg`` in one folder per pipeline, pruned on every save."""

    def __init__(self, folder: Path, cfg: EvidenceConfig) -> None:
        self.folder = folder
        self.cfg = cfg
        self.saved = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True, mode=0o750)
        # (mtime, size, path), oldest first; rebuilt from disk so limits hold across restarts
        entries = []
        for p in folder.glob("*.jpg"):
            try:
                st = p.stat()
            except OSError:
                continue
            entries.append((st.st_mtime, st.st_size, p))
        entries.sort()
        self._files: deque[tuple[float, int, Path]] = deque(entries)
        self._bytes = sum(e[1] for e in entries)
        self._prune(time.time())

    def wants(self, label: str | None, score: float | None) -> bool:
        if not self.cfg.enabled:
            return False
        if self.cfg.labels is not None and label not in self.cfg.labels:
            return False
        return not (self.cfg.min_score is not None and (score is None or score < self.cfg.min_score))

    def save(
        self, frame_bgr: np.ndarray, seq: int, label: str | None, mask: FrameMask | None = None
    ) -> Path | None:
        """Write the frame, with the privacy ``mask`` applied right before encoding; None (and
        ``last_error``) when masking, encoding or writing failed: evidence is best effort and must never stop
        the results, but a frame that could not be masked is never written (fail closed)."""
        cv2 = OPENCV.load()
        if mask is not None:
            try:
                frame_bgr = mask.apply(frame_bgr)
            except Exception as exc:  # any failure: the frame is not stored
                self.last_error = f"could not mask frame {seq}, not stored: {exc}"
                log.warning("evidence: %s", self.last_error)
                return None
        ok, buf = cv2.imencode(".jpg", frame_bgr, [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality])
        if not ok:
            self.last_error = f"could not encode frame {seq} as JPEG"
            return None
        safe_label = "".join(c if c.isalnum() or c in "-_." else "_" for c in (label or "result"))[:40]
        path = self.folder / f"{seq:012d}-{safe_label}.jpg"
        data = buf.tobytes()
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        except OSError as exc:
            self.last_error = f"could not write {path}: {exc.strerror}"
            log.warning("evidence: %s", self.last_error)
            return None
        now = time.time()
        with self._lock:
            self._files.append((now, len(data), path))
            self._bytes += len(data)
            self.saved += 1
            self._prune(now)
        return path

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
            except OSError as exc:
                log.warning("evidence: could not delete %s: %s", path, exc.strerror)

    @property
    def count(self) -> int:
        return len(self._files)

    @property
    def total_bytes(self) -> int:
        return self._bytes
