"""edge-agent end to end: ``edge-agent run CONFIG`` in a subprocess on a file source at full speed, every
result published with QoS 1 through the outbox to a private mosquitto, measured from outside by a
subscriber (receive times), by polling the daemon's peak RSS, and from the payloads' own fields.

What is measured, exactly:
- ``fps``: results received by the subscriber per second, steady state (the first ``WARMUP`` results,
  which include the model's first invocations, are left out).
- ``e2e``: frame capture -> subscriber receive. The payload's ``ts`` is the time the payload was built
  (right after postprocessing; ISO 8601, milliseconds, truncated) and ``latency_ms.total`` is capture ->
  end of postprocessing on the daemon's monotonic clock, so e2e = (receive - ts) + total. The truncation
  makes each value up to 1 ms too high, never too low. mosquitto forwards a QoS 1 PUBLISH to subscribers
  as it receives it and sends the daemon its PUBACK, so this is capture -> broker acknowledgement plus one
  loopback hop to the subscriber. ``publish_ms`` is the (receive - ts) part alone: outbox, paho, broker.
- ``stages_ms``: p50/p99 of each ``latency_ms`` stage the daemon reports in the payloads.
- ``rss_mb``: the daemon's VmHWM (kernel's peak resident set), polled every 20 ms until it exits.
- ``rss_anon_mb`` / ``rss_file_mb``: the peaks of its two parts, polled the same way. Anonymous memory is
  the daemon's own (heap, frames, the interpreter's arena); file-backed is the mapped libraries' code
  (OpenCV, LiteRT, numpy), clean and shared, and how much of it is counted depends on how the kernel holds
  those files in its page cache: on Linux 6.18 a library that something read() whole (a copy, a backup)
  sits in large folios, each mapped entirely at its first fault, and OpenCV alone counts 36 MB instead of 10.
- ``cpu_ms_per_result``: CPU time (user + system, all threads) per result of the daemon (from wait4's
  rusage), of the broker and of the subscriber (from /proc/<pid>/stat before and after).
- ``startup_s``: from just before ``Popen`` to the first result's receive time (interpreter start, imports,
  config, model load, broker connect, first frame, first inference, first publish).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml
from bench_broker import Broker, Received, Recorder
from bench_limit import percentile

DEVICE = "bench"
WARMUP = 10  # first results left out of the steady-state numbers (first invocations, connection set-up)


@dataclass
class PipelineRun:
    name: str
    exit_code: int | None
    results: int
    fps: float
    e2e_p50_ms: float
    e2e_p99_ms: float
    stages_ms: dict[str, dict[str, float]]
    rss_mb: float
    startup_s: float
    wall_s: float
    stopped_by: str  # "itself" (finished its file) or "bench" (expected results received, or timeout)
    last_stats: dict = field(default_factory=dict)  # the last stats payload the daemon published
    error: str | None = None
    source_frames: int | None = None  # frames/windows the source produced (from the stats payload)
    rss_anon_mb: float | None = None  # peak RssAnon: the daemon's own memory
    rss_file_mb: float | None = None  # peak RssFile: mapped libraries, as the page cache holds them
    skipped: int | None = None
    # CPU time per published result: the daemon (all threads), and the broker and subscriber that share
    # the machine's cores with it during the run; daemon_cores = daemon CPU time / wall time
    cpu_ms_per_result: dict[str, float] = field(default_factory=dict)
    daemon_cores: float | None = None
    # the daemon's busiest threads (first: the inference thread), per result: ms on a CPU and ms runnable
    # but waiting for one (the machine's cores were busy: other threads of the daemon, or other processes)
    threads_ms_per_result: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def agent_command() -> list[str]:
    exe = Path(sys.executable).with_name("edge-agent")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "edge_agent.cli"]


# Settings of the daemon's mqtt: section beyond the broker's address (scripts/bench --linger-ms sets one).
MQTT_SETTINGS: dict = {}


def write_config(
    work: Path, broker: Broker, name: str, source: dict, model: Path, threads: int, window: dict | None = None
) -> Path:
    state = work / f"state-{name}"
    if state.exists():  # a fresh outbox each run: nothing pending from an earlier one
        for p in sorted(state.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
    pipeline: dict = {
        "name": name,
        "source": source,
        "model": {"path": str(model), "num_threads": threads},
        "publish": {"qos": 1, "policy": "every"},
    }
    if window:
        pipeline["window"] = window
    config = {
        "device_id": DEVICE,
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "stats_interval_s": 1.0, **MQTT_SETTINGS},
        "state_dir": str(state),
        "drain_timeout_s": 60,
        "pipelines": [pipeline],
    }
    path = work / f"config-{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


MEMORY_FIELDS = ("VmHWM", "RssAnon", "RssFile")


def memory_mb(pid: int) -> dict[str, float]:
    """VmHWM (peak resident set) and the resident set's anonymous and file-backed parts now, in MB; empty
    once the process is gone."""
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in MEMORY_FIELDS:
                    out[key] = int(line.split()[1]) / 1024
    except OSError:
        return {}
    return out


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process (all its threads), from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_schedstats(pid: int, into: dict[int, tuple[int, int]]) -> None:
    """Per thread of ``pid``: (ns on a CPU, ns runnable but waiting for a CPU), from /proc/.../schedstat;
    keeps the latest value of every thread seen (threads that ended keep their last reading)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return
    for task in tasks:
        try:
            run_ns, wait_ns, _ = (int(v) for v in (task / "schedstat").read_text().split())
        except (OSError, ValueError):
            continue
        into[int(task.name)] = (run_ns, wait_ns)


def _ts_epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class DaemonRun:
    """What ``measure_daemon`` saw from outside: the messages received and the daemon's resources."""

    records: list[Received]
    t0: float  # time.time() just before Popen
    rss_mb: float  # peak (VmHWM)
    wall_s: float
    exit_code: int | None
    stopped_by: str
    cpu_s: dict[str, float]  # daemon (all threads), broker, subscriber
    sched: dict[int, tuple[int, int]]  # per thread: ns on a CPU, ns waiting for one
    log_path: Path
    cpu_samples: list[tuple[float, float]]  # (time.time(), the daemon's CPU seconds so far), every 0.5 s
    peaks_mb: dict[str, float] = field(default_factory=dict)  # MEMORY_FIELDS' highest polled values


def run_daemon(
    work: Path, broker: Broker, name: str, config: Path, *, expect: int | None, timeout: float
) -> PipelineRun:
    """Run the daemon until it ends by itself (its file source finished and the outbox drained), or until
    ``expect`` results arrived and nothing more came for 3 s, or ``timeout``; then measure."""
    seen = measure_daemon(
        work, broker, name, config, [f"edge/{DEVICE}/{name}/result", f"edge/{DEVICE}/stats"], expect, timeout
    )
    run = summarize(
        name, seen.records, seen.t0, seen.rss_mb, seen.wall_s, seen.exit_code, seen.stopped_by, seen.log_path
    )
    run.rss_anon_mb, run.rss_file_mb = seen.peaks_mb.get("RssAnon"), seen.peaks_mb.get("RssFile")
    if run.results:
        run.cpu_ms_per_result = {who: s * 1000 / run.results for who, s in seen.cpu_s.items()}
        run.daemon_cores = seen.cpu_s["daemon"] / seen.wall_s
        busiest = sorted(seen.sched.values(), reverse=True)[:6]
        run.threads_ms_per_result = [
            {"cpu": run_ns / 1e6 / run.results, "waiting_for_cpu": wait_ns / 1e6 / run.results}
            for run_ns, wait_ns in busiest
        ]
    return run


def measure_daemon(
    work: Path,
    broker: Broker,
    name: str,
    config: Path,
    topics: list[str],
    expect: int | None,
    timeout: float,
) -> DaemonRun:
    """``edge-agent run config`` with a subscriber on ``topics``, until it ends by itself, or ``expect``
    results arrived and nothing more came for 3 s, or ``timeout`` (then SIGTERM: a clean stop)."""
    record = work / f"received-{name}.txt"
    recorder = Recorder(broker, topics, record).start()
    log_path = work / f"agent-{name}.log"
    env = dict(os.environ)
    peaks: dict[str, float] = {}
    stopped_by = "itself"
    broker_cpu0 = cpu_seconds(broker.proc.pid) if broker.proc else None
    sub_cpu0 = cpu_seconds(recorder.proc.pid) if recorder.proc else None
    with log_path.open("wb") as log:
        t0 = time.time()
        proc = subprocess.Popen(
            [*agent_command(), "run", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.monotonic() + timeout
        killed = False
        seen, seen_at = 0, time.monotonic()
        sched: dict[int, tuple[int, int]] = {}
        cpu_samples: list[tuple[float, float]] = []
        next_sched = 0.0
        next_count = time.monotonic() + 0.5
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # rusage: the daemon's own CPU time
                if pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    break
                for key, mb in memory_mb(proc.pid).items():
                    peaks[key] = max(peaks.get(key, 0.0), mb)
                now = time.monotonic()
                if now >= next_sched:
                    next_sched = now + 0.1
                    thread_schedstats(proc.pid, sched)
                if now >= next_count:  # results so far, from the recorder's file (cheap: count topic markers)
                    next_count = now + 0.5
                    cpu_now = cpu_seconds(proc.pid)
                    if cpu_now is not None:
                        cpu_samples.append((time.time(), cpu_now))
                    count = record.read_bytes().count(b"/result ") if record.exists() else 0
                    if count != seen:
                        seen, seen_at = count, now
                    if expect is not None and seen >= expect and now - seen_at > 3.0:
                        stopped_by = "bench"
                        proc.send_signal(signal.SIGTERM)
                if now > deadline:
                    stopped_by = "bench (timeout)"
                    if killed:
                        proc.kill()  # did not stop within 30 s of SIGTERM
                    proc.send_signal(signal.SIGTERM)
                    deadline, killed = now + 30, True
                time.sleep(0.02)
        except BaseException:  # interrupted (Ctrl-C, SIGTERM): leave no daemon or subscriber behind
            _terminate(proc)
            recorder.stop()
            raise
        exit_code = proc.returncode
    wall = time.time() - t0
    cpu = {"daemon": usage.ru_utime + usage.ru_stime}
    for who, pid0, before in (("broker", broker.proc, broker_cpu0), ("subscriber", recorder.proc, sub_cpu0)):
        after = cpu_seconds(pid0.pid) if pid0 is not None else None
        if before is not None and after is not None:
            cpu[who] = after - before
    records = recorder.stop()
    rss = peaks.get("VmHWM", 0.0)
    return DaemonRun(records, t0, rss, wall, exit_code, stopped_by, cpu, sched, log_path, cpu_samples, peaks)


def summarize(
    name: str,
    records: list[Received],
    t0: float,
    rss: float,
    wall: float,
    exit_code: int | None,
    stopped_by: str,
    log_path: Path,
) -> PipelineRun:
    results = [r for r in records if r.topic.endswith("/result")]
    stats = [r.payload for r in records if r.topic.endswith("/stats")]
    error = None
    if exit_code not in (0, None) or len(results) < 2:
        tail = log_path.read_text(errors="replace")[-1500:]
        error = f"exit code {exit_code}, {len(results)} results; log tail:\n{tail}"
    if len(results) < 2:
        return PipelineRun(
            name,
            exit_code,
            len(results),
            0.0,
            0.0,
            0.0,
            {},
            rss,
            0.0,
            wall,
            stopped_by,
            stats[-1] if stats else {},
            error,
        )
    results.sort(key=lambda r: r.recv_at)
    k = min(WARMUP, len(results) // 10)
    steady = results[k:]
    span = steady[-1].recv_at - steady[0].recv_at
    fps = (len(steady) - 1) / span if span > 0 else 0.0
    publish = [(r.recv_at - _ts_epoch(r.payload["ts"])) * 1000 for r in steady if "ts" in r.payload]
    e2e = [
        (r.recv_at - _ts_epoch(r.payload["ts"])) * 1000 + float(r.payload["latency_ms"]["total"])
        for r in steady
        if "ts" in r.payload and "total" in (r.payload.get("latency_ms") or {})
    ]
    stages: dict[str, list[float]] = {}
    for r in steady:
        for stage, ms in (r.payload.get("latency_ms") or {}).items():
            stages.setdefault(stage, []).append(float(ms))
    if publish:
        stages["publish"] = publish
    stages_ms = {s: {"p50": percentile(v, 50), "p99": percentile(v, 99)} for s, v in stages.items()}
    source = next(iter((stats[-1].get("pipelines") or {}).values()), {}) if stats else {}
    return PipelineRun(
        name=name,
        exit_code=exit_code,
        results=len(results),
        fps=fps,
        e2e_p50_ms=percentile(e2e, 50) if e2e else 0.0,
        e2e_p99_ms=percentile(e2e, 99) if e2e else 0.0,
        stages_ms=stages_ms,
        rss_mb=rss,
        startup_s=results[0].recv_at - t0,
        wall_s=wall,
        stopped_by=stopped_by,
        last_stats=stats[-1] if stats else {},
        error=error,
        source_frames=source.get("frames"),
        skipped=source.get("skipped"),
    )


def write_sensor_csv(path: Path, rows: int, channels: int) -> None:
    """Accelerometer-like samples (ax, ay, az): a walk at 2 Hz with noise, as a CSV with a header."""
    import numpy as np

    if path.exists() and path.stat().st_size > 0:
        return
    t = np.arange(rows) / 100.0
    rng = np.random.default_rng(1)
    data = np.sin(2 * np.pi * 2.0 * t)[:, None] + rng.normal(0, 0.1, (rows, channels))
    data[:, -1] += 1.0
    names = ["ax", "ay", "az"][:channels] if channels <= 3 else [f"c{i}" for i in range(channels)]
    tmp = path.with_suffix(".tmp")
    np.savetxt(tmp, data, fmt="%.4f", delimiter=",", header=",".join(names), comments="")
    tmp.rename(path)
