"""``DeployAgent``: the device side of a deployment, from the inbound message to ``active`` or rolled back.

receive -> verify -> fetch -> store -> test (load in a second interpreter + golden samples) -> swap ->
watch -> active (confirmed) or rolled_back. The daemon hands in narrow callables, so this module knows
neither paho nor a runtime:

    config_models() -> {pipeline: the model file its config names}  (asked each time: a reload changes it)
    subscribe(topic, handler, max_bytes) -> unsubscribe callable or None; handler(topic, payload: bytes)
    publish(topic, payload: bytes, retain: bool)
    load_candidate(pipeline, model_path, manifest: dict | None) -> candidate   (None: the config's model)
    run_golden(candidate, golden: GoldenSet, manifest: Manifest) -> None      (raises on a mismatch)
    swap(pipeline, candidate)                                                   (between two frames)
    pipeline_health(pipeline) -> {"state": str, "errors": int, "results": int, "invoke_p99_ms": float|None}

Threads: handlers run on the network thread and only put the payload on a bounded queue (never raise,
never block); one worker thread does everything else, one deployment at a time.

A little over the usual ~450 lines on purpose: the steps above share one record (``ModelStore``: pending,
current, previous) and one state report per deployment, and recovery after a restart resumes any of them;
split by step, each piece would reach into the others' record. Verifying, fetching, storing, golden samples,
the health watch and the state payloads are modules of their own.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edge_agent.errors import EdgeAgentError
from edge_agent.fleet.config import FleetConfig
from edge_agent.fleet.errors import STATS_COUNTERS, DeployRefused, Stopping
from edge_agent.fleet.fetch import fetch_model
from edge_agent.fleet.messages import Deployment, Running, split_manifest
from edge_agent.fleet.signing import load_trusted_keys
from edge_agent.fleet.state import DeployRun, StateReporter
from edge_agent.fleet.store import ModelStore
from edge_agent.fleet.topics import command_topic, deploy_topic
from edge_agent.fleet.verify import DeviceIdentity, peek_number, verify_command, verify_deployment
from edge_agent.fleet.watch import unhealthy_reason
from edge_agent.manifest import file_sha256

log = logging.getLogger(__name__)

_QUEUE_MAX = 16  # inbound messages waiting for the worker; more are dropped (and counted)


class DeployAgent:
    def __init__(
        self,
        cfg: FleetConfig,
        *,
        device_id: str,
        state_dir: Path,
        config_models: Callable[[], Mapping[str, Path]],
        subscribe: Callable[[str, Callable[[str, bytes], None], int], Any],
        publish: Callable[[str, bytes, bool], Any],
        load_candidate: Callable[[str, Path, dict[str, Any] | None], Any],
        run_golden: Callable[..., None],
        swap: Callable[[str, Any], None],
        pipeline_health: Callable[[str], dict[str, Any]],
        topic_prefix: str = "edge",
        trusted_keys: dict[str, Any] | None = None,
        poll_s: float = 1.0,
    ):
        self.cfg, self.prefix, self.poll_s = cfg, topic_prefix, poll_s
        self.device_id, self.config_models = device_id, config_models
        self.trusted_keys = load_trusted_keys(cfg.trusted_keys_dir) if trusted_keys is None else trusted_keys
        self.store = ModelStore(state_dir)
        self._subscribe, self._load, self._golden = subscribe, load_candidate, run_golden
        self._swap, self._health = swap, pipeline_health
        self.reporter = StateReporter(
            topic_prefix, device_id, list(cfg.groups), publish, self.running, state_dir / "fleet-state.json"
        )
        self.counts: Counter[str] = Counter()
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(_QUEUE_MAX)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._config_sha: dict[Path, tuple[tuple[int, int] | None, str | None]] = {}
        self._busy: tuple[str, int] | None = None
        self._startup: list[tuple[str, Any]] = []
        self._unsaved: str | None = None  # why the record could not be saved last (said once per cause)

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled and bool(self.trusted_keys)

    # -- what runs -----------------------------------------------------------------------------------------
    @property
    def me(self) -> DeviceIdentity:
        """Who this device is now: its pipelines are the running config's (a reload adds or removes some)."""
        return DeviceIdentity(self.device_id, frozenset(self.cfg.groups), frozenset(self.config_models()))

    def _config_model(self, pipeline: str) -> dict[str, Any]:
        """The config's own model for ``pipeline``: its file now (a reload may name another), its sha256
        computed again only when the file changed."""
        path = Path(self.config_models()[pipeline])
        try:
            st = path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        known = self._config_sha.get(path)
        if known is None or known[0] != stamp:
            self._config_sha[path] = known = (stamp, _sha256_or_none(path) if stamp is not None else None)
        return {"sha256": known[1], "number": None, "model": path.stem, "path": str(path)}

    def _current(self, pipeline: str) -> dict[str, Any]:
        return self.store.entry(pipeline)["current"] or self._config_model(pipeline)

    def running(self) -> dict[str, Running]:
        return {
            p: Running(sha256=c.get("sha256"), number=c.get("number"), model=c.get("model"))
            for p in self.config_models()
            for c in [self._current(p)]
        }

    def recover(self) -> dict[str, Path]:
        """Call before the pipelines are built: finish what a crash interrupted, and return the model file
        each pipeline must load instead of its config's (pipelines not listed keep the config's)."""
        for pipeline in self.config_models():
            pending = self.store.entry(pipeline)["pending"]
            if not pending:
                continue
            number, phase = pending["deployment"]["number"], pending["phase"]
            if phase == "watching":
                restarts = pending.get("restarts", 0) + 1
                if restarts >= 2:
                    back = _record(self.store.entry(pipeline)["previous"])
                    self._note(pipeline, current=back, previous=None, pending=None)
                    self._startup.append(
                        (
                            "report",
                            (
                                pipeline,
                                number,
                                pending["sha256"],
                                "rolled_back",
                                "the daemon restarted twice while watching the new model",
                            ),
                        )
                    )
                else:
                    self._note(pipeline, pending={**pending, "restarts": restarts})
                    self._startup.append(("resume_watch", pipeline))
            else:
                # "stopped" stays until the step runs again (_apply writes a new record): a stop before
                # that is not an attempt either.
                attempts = pending.get("attempts", 0) + (0 if pending.get("stopped") else 1)
                if attempts >= 2:
                    self._note(pipeline, pending=None)
                    self._startup.append(
                        (
                            "report",
                            (
                                pipeline,
                                number,
                                pending["sha256"],
                                "failed",
                                f"interrupted: the daemon restarted twice during {phase}",
                            ),
                        )
                    )
                else:
                    self._note(pipeline, pending={**pending, "attempts": attempts})
                    self._startup.append(("redeploy", pending["deployment"]))
        self.store.prune()
        return {p: path for p in self.config_models() if (path := self.store.current_model(p)) is not None}

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker (it first finishes what a restart interrupted), then subscribe to this device's
        and its groups' deploy and command topics. Call after the broker connection is set up."""
        if not self.enabled:
            return
        self._thread = threading.Thread(target=self._work, name="fleet-deploy", daemon=True)
        self._thread.start()
        for item in [("hello", None), *self._startup]:
            self._queue.put(item)
        self._startup.clear()
        limit = self.cfg.max_inbound_bytes
        for t in [{"device": self.me.device_id}, *({"group": g} for g in sorted(self.me.groups))]:
            self._subscribe(deploy_topic(self.prefix, **t), self._inbound("deploy"), limit)
            self._subscribe(command_topic(self.prefix, **t), self._inbound("command"), limit)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def stats(self) -> dict[str, Any]:
        """The ``fleet`` object of the stats payload: every counter in ``STATS_COUNTERS`` (0 included), and
        ``refused_<reason>`` for the reasons seen (``errors.REASONS``; the stats schema declares each)."""
        counts = dict(self.counts)
        return {
            "enabled": self.enabled,
            **{k: counts.pop(k, 0) for k in STATS_COUNTERS},
            **{k: v for k, v in counts.items() if k.startswith("refused_")},
        }

    def _inbound(self, kind: str) -> Callable[[str, bytes], None]:
        def handler(topic: str, payload: bytes) -> None:  # network thread: never raise, never block
            try:
                if not payload:
                    return  # a cleared retained message
                if len(payload) > self.cfg.max_inbound_bytes:
                    payload = payload[: self.cfg.max_inbound_bytes + 1]  # enough to be refused as oversized
                self._queue.put_nowait((kind, bytes(payload)))
            except queue.Full:
                self.counts["dropped_queue_full"] += 1
            except Exception:  # pragma: no cover - a bug here must not kill paho's thread
                log.exception("fleet inbound handler")

        return handler

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                kind, item = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                getattr(self, f"_on_{kind}")(item)
            except Exception:  # a bug must not end the worker: log it and take the next message
                self.counts["internal_errors"] += 1
                log.exception("fleet worker: %s", kind)
            finally:
                self._busy = None

    # -- inbound -------------------------------------------------------------------------------------------
    def _duplicate(self, payload: bytes) -> bool:
        """A retained message seen again after a reconnect (same number as applied or in progress)."""
        peek = peek_number(payload, self.config_models())
        if peek is None:
            return False
        return peek == self._busy or peek[1] == self.store.last_number(peek[0])

    def _verify_args(self) -> dict[str, Any]:
        return {
            "max_bytes": self.cfg.max_inbound_bytes,
            "trusted_keys": self.trusted_keys,
            "me": self.me,
            "last_number": self.store.last_number,
        }

    def _note(self, pipeline: str, **fields: Any) -> None:
        """Record a step that has happened whether or not the card takes it; a record it cannot save is said
        (once per cause), not raised: the step stands for this run, and the next save writes it too."""
        why = self.store.note(pipeline, **fields)
        if why is not None and why != self._unsaved:
            log.warning("fleet: %s; until then a restart finds the record as it was last saved", why)
        self._unsaved = why

    def _refuse(self, run: DeployRun, exc: DeployRefused) -> None:
        self.counts["refused"] += 1
        self.counts[f"refused_{exc.reason}"] += 1
        if run.number is None and exc.subject is not None:
            run.pipeline, run.number = exc.subject
        if run.state is None:
            run.advance("received")
        run.advance("failed", f"{exc.reason}: {exc}")

    def _on_deploy(self, payload: bytes) -> None:
        if self._duplicate(payload):
            self.counts["duplicates_ignored"] += 1
            return
        peek = peek_number(payload, self.config_models())
        run = self.reporter.run(*(peek or (None, None)))
        self.counts["received"] += 1
        run.advance("received")
        try:
            dep = verify_deployment(payload, **self._verify_args())
            run.pipeline, run.number, run.sha256 = dep.pipeline, dep.number, dep.model.sha256
            self.store.update(dep.pipeline, last_number=dep.number)  # consumed: never applied twice
        except DeployRefused as exc:
            self._refuse(run, exc)
            return
        run.advance("verified")
        self._apply(run, dep, attempts=0)

    def _on_redeploy(self, obj: dict[str, Any]) -> None:
        dep = Deployment.model_validate(obj)
        run = self.reporter.run(dep.pipeline, dep.number, dep.model.sha256)
        run.advance("received", "resumed after a restart")
        run.advance("verified")
        self._apply(run, dep, attempts=self.store.entry(dep.pipeline)["pending"]["attempts"])

    def _on_hello(self, _: None) -> None:
        self.reporter.republish_last()

    def _on_report(self, item: tuple[str, int, str, str, str]) -> None:
        pipeline, number, sha256, state, reason = item
        run = self.reporter.run(pipeline, number, sha256)
        run.state = "verified"  # the earlier steps were reported before the restart
        run.advance(state, reason)

    # -- apply ---------------------------------------------------------------------------------------------
    def _apply(self, run: DeployRun, dep: Deployment, attempts: int) -> None:
        pipeline, sha = dep.pipeline, dep.model.sha256
        self._busy = (pipeline, dep.number)
        if self._current(pipeline).get("sha256") == sha:
            self._note(pipeline, pending=None)
            run.advance("active", "this model is already running", confirmed=True)
            return
        manifest_raw = dep.model.manifest
        pending = {"deployment": dep.model_dump(mode="json", by_alias=True), "sha256": sha,
                   "phase": "fetching", "attempts": attempts}  # fmt: skip
        try:
            manifest, golden = split_manifest(manifest_raw)
            self.store.update(pipeline, pending=pending)
            run.advance("fetching")
            path = self.store.model_path(sha)
            if not (path.is_file() and file_sha256(path) == sha):
                data = fetch_model(dep, self.cfg, self._subscribe, self._stop)
                path = self.store.write_model(
                    data, sha, dep.model.size, self.cfg.max_model_bytes, manifest_raw
                )
            self.store.update(pipeline, pending={**pending, "phase": "testing"})
            run.advance("testing")
            candidate = self._test(pipeline, path, manifest_raw, manifest, golden)
        except DeployRefused as exc:
            self._note(pipeline, pending=None)
            self.store.prune()
            self._refuse(run, exc)
            return
        except Stopping:  # the next start takes it up again, as after a crash, but without counting it
            self._note(pipeline, pending={**pending, "stopped": True})
            return
        baseline = self._safe_health(pipeline)
        before = self.store.entry(pipeline)
        old = self._current(pipeline)
        try:  # saved before the swap: a card that cannot take the record refuses it, the old model running
            self.store.update(
                pipeline,
                current={"sha256": sha, "number": dep.number, "model": manifest.name},
                previous=old,
                pending={**pending, "phase": "watching", "baseline_p99_ms": baseline.get("invoke_p99_ms")},
            )
            self._swap(pipeline, candidate)  # (a candidate never swapped in is closed as it goes: GC)
        except Exception as exc:  # write_failed, or a reload removed the pipeline since the test
            self._note(pipeline, current=before["current"], previous=before["previous"], pending=None)
            self.store.prune()
            if not isinstance(exc, DeployRefused):
                raise
            self._refuse(run, exc)
            return
        self.counts["swapped"] += 1
        watch_s = dep.healthy_for_s if dep.healthy_for_s is not None else self.cfg.watch_s
        run.advance("active", f"watching for {watch_s:g} s")
        self._watch(run, pipeline, watch_s)

    def _test(
        self, pipeline: str, path: Path, manifest_raw: dict[str, Any], manifest: Any, golden: Any
    ) -> Any:
        try:
            candidate = self._load(pipeline, path, manifest_raw)
        except DeployRefused:
            raise
        except Exception as exc:  # EdgeAgentError from the loader, or anything a broken model throws
            raise DeployRefused(
                "incompatible", f"the model does not fit pipeline {pipeline!r}: {exc}"
            ) from None
        if golden is not None:
            try:
                self._golden(candidate, golden, manifest)
            except DeployRefused:
                raise
            except Exception as exc:
                raise DeployRefused("golden_mismatch", f"golden samples failed: {exc}") from None
        return candidate

    # -- watch and roll back -------------------------------------------------------------------------------
    def _safe_health(self, pipeline: str) -> dict[str, Any]:
        try:
            return dict(self._health(pipeline))
        except Exception as exc:
            return {"state": f"health unavailable: {exc}"}

    def _on_resume_watch(self, pipeline: str) -> None:
        pending = self.store.entry(pipeline)["pending"]
        dep = pending["deployment"]
        run = self.reporter.run(pipeline, dep["number"], pending["sha256"])
        run.state = "active"
        watch_s = dep.get("healthy_for_s")
        watch_s = self.cfg.watch_s if watch_s is None else watch_s
        run.advance("active", f"watching for {watch_s:g} s (again, after a restart)")
        self._busy = (pipeline, dep["number"])
        self._watch(run, pipeline, watch_s)

    def _watch(self, run: DeployRun, pipeline: str, watch_s: float) -> None:
        pending = self.store.entry(pipeline)["pending"]
        start = self._safe_health(pipeline)
        start["invoke_p99_ms"] = pending.get("baseline_p99_ms")
        deadline = time.monotonic() + watch_s
        while True:
            reason = unhealthy_reason(start, self._safe_health(pipeline), self.cfg.p99_factor)
            if reason is not None:
                self._roll_back(run, pipeline, reason)
                return
            if time.monotonic() >= deadline:
                break
            if self._stop.wait(min(self.poll_s, max(0.0, deadline - time.monotonic()))):
                return  # stopping: pending stays "watching"; the next start resumes the watch
        self._note(pipeline, pending=None)
        self.store.prune()
        self.counts["active"] += 1
        run.advance("active", f"healthy for {watch_s:g} s", confirmed=True)

    def _roll_back(self, run: DeployRun, pipeline: str, reason: str) -> None:
        """Swap the previous model back in; the record changes only after the swap succeeded."""
        entry = self.store.entry(pipeline)
        prev = entry["previous"]
        if prev is None:
            self._note(pipeline, pending=None)
            self._refuse(run, DeployRefused("no_previous", f"{reason}; no previous model to go back to"))
            return
        if prev.get("path"):  # the config's own model: the file it names now, as a restart would load (a
            # pipeline a reload removed fails to load below, and is refused there)
            path, manifest = self.config_models().get(pipeline, Path(prev["path"])), None
        else:
            path = self.store.model_path(prev["sha256"])
            manifest = _read_json(self.store.manifest_path(prev["sha256"]))
        try:
            candidate = self._load(pipeline, path, manifest)
            self._swap(pipeline, candidate)
        except Exception as exc:
            self._note(pipeline, pending=None)
            self._refuse(
                run, DeployRefused("no_previous", f"{reason}; the previous model failed to load: {exc}")
            )
            return
        self._note(pipeline, current=_record(prev), previous=None, pending=None)
        self.store.prune()
        self.counts["rolled_back"] += 1
        run.advance("rolled_back", reason)

    def _on_command(self, payload: bytes) -> None:
        if self._duplicate(payload):
            self.counts["duplicates_ignored"] += 1
            return
        run = self.reporter.run(*(peek_number(payload, self.config_models()) or (None, None)))
        run.advance("received")
        try:
            cmd = verify_command(payload, **self._verify_args())
            run.pipeline, run.number = cmd.pipeline, cmd.number
            self.store.update(cmd.pipeline, last_number=cmd.number)
        except DeployRefused as exc:
            self._refuse(run, exc)
            return
        prev = self.store.entry(cmd.pipeline)["previous"]
        run.sha256 = prev.get("sha256") if prev else None
        run.advance("verified")
        run.advance("testing")
        self._roll_back(run, cmd.pipeline, "rollback command")


def _record(previous: dict[str, Any] | None) -> dict[str, Any] | None:
    """What ``current`` becomes when ``previous`` runs again: the config's own model is kept as no record
    (None): which file and sha256 that is follows the config, as at a start, even after a reload."""
    return None if previous is None or previous.get("path") else previous


def _sha256_or_none(path: Path) -> str | None:
    try:
        return file_sha256(path)
    except OSError:  # not a readable file: the config names a model that is not there (yet)
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


__all__ = ["DeployAgent", "EdgeAgentError"]
