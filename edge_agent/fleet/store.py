"""Models on the device's disk and the record of what each pipeline runs, both crash-safe.

Files: ``state_dir/deployed/<sha256>.tflite`` and ``<sha256>.json`` (its manifest), each written to a
``.tmp-`` file, fsynced, renamed over the final name, then the directory fsynced: after a power cut a
model file is either absent or whole (its sha256 is checked again before use anyway). The record
``state_dir/fleet.json`` is written the same way; it says per pipeline which model is current, which is
the previous one, the last deployment number applied, and the deployment in progress (with its phase),
so a restart knows whether it was interrupted before the swap (old model still current) or after it.
Leftover ``.tmp-`` files are removed at open. Only the current and previous models are kept. A record
that cannot be read (a file system that lost a renamed file's data) is moved aside, as the outbox moves a
damaged database aside, and the store starts over; ``unreadable_record`` says so for the daemon's log.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edge_agent.fleet.errors import DeployRefused

RECORD_VERSION = 1
TMP_MARK = ".tmp-"


MODELS_KEPT = 3  # per pipeline: the current model, the previous one (to roll back to) and one arriving


def has_deployments(state_dir: Path) -> bool:
    """Anything ``ModelStore`` keeps here: its record (or an interrupted write of it), a file in deployed/."""
    deployed = state_dir / "deployed"
    return (
        (state_dir / "fleet.json").exists()
        or (state_dir / f"{TMP_MARK}fleet.json").exists()
        or (deployed.is_dir() and any(deployed.iterdir()))
    )


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, chunks: Iterable[bytes]) -> None:
    """Write through ``.tmp-<name>``, fsync, rename over ``path``, fsync the directory. A write that fails
    (a full card) leaves no partial ``.tmp-`` file taking the room behind it."""
    tmp = path.with_name(f"{TMP_MARK}{path.name}")
    try:
        with tmp.open("wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    fsync_dir(path.parent)


def check_model_bytes(data: bytes, sha256: str, size: int, max_bytes: int) -> None:
    """DeployRefused('too_large' | 'truncated' | 'sha256_mismatch') unless ``data`` is exactly the model."""
    if size > max_bytes or len(data) > max_bytes:
        raise DeployRefused(
            "too_large", f"model of {max(size, len(data))} bytes exceeds fleet.max_model_bytes ({max_bytes})"
        )
    if len(data) < size:
        raise DeployRefused("truncated", f"model has {len(data)} of its {size} bytes (truncated in transit?)")
    if len(data) > size:
        raise DeployRefused("sha256_mismatch", f"model has {len(data)} bytes, the deployment says {size}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise DeployRefused(
            "sha256_mismatch", f"model sha256 {actual[:12]}... differs from the signed {sha256[:12]}..."
        )


def _empty_entry() -> dict[str, Any]:
    return {"current": None, "previous": None, "last_number": None, "pending": None}


class ModelStore:
    """The ``deployed/`` directory and ``fleet.json``; thread-safe; every change is persisted before return.

    Not ``state_dir/models/``: that is where the README tells users to put their own models, and ``prune``
    deletes what no deployment refers to (it only ever touches ``<sha256>.tflite/.json`` names, too)."""

    def __init__(self, state_dir: Path):
        self.dir = state_dir / "deployed"
        self.record_path = state_dir / "fleet.json"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        leftovers = [*self.dir.glob(f"{TMP_MARK}*"), *state_dir.glob(f"{TMP_MARK}fleet.json")]
        for p in leftovers:  # a write interrupted before its rename: the final file is still the old one
            p.unlink(missing_ok=True)
        self.removed_leftovers = [p.name for p in leftovers]
        self.unreadable_record: str | None = None  # why fleet.json was started over, for the daemon's log
        self._record = self._load()

    def _load(self) -> dict[str, Any]:
        # An unreadable record is only reachable if the file system lost a renamed file's data; start over
        # with the config's models (the daemon's fallback) rather than refuse to run, and say so.
        try:
            rec = json.loads(self.record_path.read_text())
        except FileNotFoundError:
            return {"version": RECORD_VERSION, "pipelines": {}}
        except (OSError, ValueError) as exc:
            return self._start_over(str(exc))
        if not isinstance(rec, dict) or not isinstance(rec.get("pipelines"), dict):
            return self._start_over("not a record of pipelines")
        return rec

    def _start_over(self, why: str) -> dict[str, Any]:
        aside = self.record_path.with_name(
            f"{self.record_path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        )
        try:
            os.replace(self.record_path, aside)
            kept = f"moved aside to {aside.name} for inspection"
        except OSError as exc:
            kept = f"left in place ({exc.strerror})"
        self.unreadable_record = (
            f"{self.record_path} could not be read ({why[:120]}), {kept}; started over: each pipeline runs "
            "its config's model, deployed files no record names are removed, and a deployment the broker "
            "still retains is applied again"
        )
        return {"version": RECORD_VERSION, "pipelines": {}, "recovered_from_corrupt_record": True}

    def _save(self, record: dict[str, Any]) -> None:
        atomic_write(self.record_path, [json.dumps(record, indent=1, sort_keys=True).encode()])

    # -- reading ----------------------------------------------------------------------------------------
    def entry(self, pipeline: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._record["pipelines"].get(pipeline) or _empty_entry())

    def last_number(self, pipeline: str) -> int | None:
        return self.entry(pipeline)["last_number"]

    def model_path(self, sha256: str) -> Path:
        return self.dir / f"{sha256}.tflite"

    def manifest_path(self, sha256: str) -> Path:
        return self.dir / f"{sha256}.json"

    def current_model(self, pipeline: str) -> Path | None:
        """The model file the daemon should load for ``pipeline`` at start, or None for the config's own."""
        cur = self.entry(pipeline)["current"]
        if cur is None or cur.get("sha256") is None:
            return None
        path = self.model_path(cur["sha256"])
        return path if path.is_file() else None

    # -- writing ----------------------------------------------------------------------------------------
    def write_model(
        self, data: bytes, sha256: str, size: int, max_bytes: int, manifest: dict[str, Any]
    ) -> Path:
        """Check and store a model and its manifest; returns the model path. A card that cannot take them
        (full, read-only, failing) refuses the deployment with what the file system said: the running model
        stays, and the operator sees why."""
        check_model_bytes(data, sha256, size, max_bytes)
        path = self.model_path(sha256)
        try:
            atomic_write(self.manifest_path(sha256), [json.dumps(manifest, indent=1).encode()])
            atomic_write(path, [data])
        except OSError as exc:
            raise DeployRefused(
                "write_failed",
                f"could not store the model ({len(data):,} bytes) in {self.dir}: {exc.strerror or exc}; make "
                "room on the device's state_dir (edge-agent check says what its config may keep there)",
            ) from None
        return path

    def update(self, pipeline: str, **fields: Any) -> dict[str, Any]:
        """Set fields of ``pipeline``'s entry (current, previous, last_number, pending) and persist. A record
        the card cannot take (full, read-only) changes nothing, in memory or on disk, and refuses the step
        (``write_failed``): what runs and what a restart finds stay the same."""
        with self._lock:
            record = copy.deepcopy(self._record)
            entry = record["pipelines"].setdefault(pipeline, _empty_entry())
            entry.update(copy.deepcopy(fields))
            try:
                self._save(record)
            except OSError as exc:
                raise DeployRefused("write_failed", self._not_saved(exc)) from None
            self._record = record
            return copy.deepcopy(entry)

    def note(self, pipeline: str, **fields: Any) -> str | None:
        """Set fields for a step that has happened whether or not the card takes it (a refusal, a stop, a
        swap back, the end of a watch), and persist them if it can; returns why not, else None. The next
        save that works writes them too; until then a restart finds the record as it was last saved."""
        with self._lock:
            self._record["pipelines"].setdefault(pipeline, _empty_entry()).update(copy.deepcopy(fields))
            try:
                self._save(self._record)
            except OSError as exc:
                return self._not_saved(exc)
            return None

    def _not_saved(self, exc: OSError) -> str:
        return (
            f"could not save {self.record_path}: {exc.strerror or exc}; make room on the device's state_dir "
            "(edge-agent check says what its config may keep there)"
        )

    def prune(self) -> list[str]:
        """Delete model files no pipeline's current, previous or pending refers to; returns their names. A
        file the card will not delete (gone read-only) is left for the next prune: nothing refers to it."""
        with self._lock:
            keep: set[str] = set()
            for e in self._record["pipelines"].values():
                for slot in (e.get("current"), e.get("previous")):
                    if slot and slot.get("sha256"):
                        keep.add(slot["sha256"])
                if e.get("pending"):
                    keep.add(e["pending"]["sha256"])
            removed = []
            for p in self.dir.iterdir():
                stem = p.name.split(".")[0]
                ours = len(stem) == 64 and all(c in "0123456789abcdef" for c in stem)
                if ours and p.suffix in (".tflite", ".json") and stem not in keep:
                    try:
                        p.unlink(missing_ok=True)
                    except OSError:
                        continue
                    removed.append(p.name)
            if removed:
                fsync_dir(self.dir)
            return removed
