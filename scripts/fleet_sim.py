"""Fleet simulation (scripts/fleet-sim): how one broker and the fleet code carry N devices.

Every device is a real ``edge-agent run`` process (its own config, state dir, device id and broker user)
with a sensor pipeline on a tiny int8 model, fed by a ``sh`` loop printing one line every 0.5 s (one
inference per second per device), fleet enabled with the operator's trusted key, all in one group. The
broker is mosquitto on a free 127.0.0.1 port with the shipped ACL (edge_agent/templates/mosquitto-acl.example)
plus a read-only user for this script, persistence on (retained models and deployments survive the restart,
as on a real broker) and ``sys_interval 1`` for its byte counters.

Measured per N:
- deployment: ``edge-fleet deploy v2 --group sim --canary 1`` as a subprocess; times from its start to the
  canary and to every device reporting ``active`` (swapped) and ``active (confirmed)`` (after the watch,
  ``--healthy-for``) on their deploy-state topics; broker CPU seconds (psutil) and peak RSS (sampled at 10 Hz)
  over the deployment; bytes the broker received/sent ($SYS counters) minus the idle rate of the fleet;
  the daemons' CPU seconds and their RSS/USS summed.
- reconnect storm: the broker stops (SIGTERM), stays down ``--outage`` s and starts on the same port; each
  daemon's reconnect instant is its first ``connected to MQTT broker`` log line after the stop (ms
  timestamps); delays are counted from the moment the broker accepts connections again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edge_agent.errors import EdgeAgentError  # noqa: E402
from scripts.bench_report import machine  # noqa: E402
from scripts.fleet_sim_monitor import Monitor, RssSampler, percentiles  # noqa: E402
from scripts.fleet_sim_report import table  # noqa: E402
from tests.fixtures.broker import Mosquitto  # noqa: E402

ACL = REPO / "edge_agent" / "templates" / "mosquitto-acl.example"
BIN = Path(sys.executable).parent
GROUP, PIPELINE = "sim", "sensor"
FEED = "while :; do echo 0.2,0.4,0.6; sleep 0.5; done"  # 3 values a line, window 6: one inference a second
MSG_LIMIT = 256 * 1024  # the model is ~1.3 KB, a deployment (manifest + golden samples) ~3 KB
STAMP = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ "  # the daemon's log format (local time, ms)
CONNECTED = re.compile(STAMP + r"\S+: connected to MQTT broker", re.M)
STATE = re.compile(STAMP + r"edge_agent\.fleet\.state: deploy \S+ (\d+): (\w+)(.*)$", re.M)
# "active" lines that mean confirmed: after the watch, or the model was already running (the canary)
CONFIRMED = ("(healthy for", "(this model is already running")
DEPLOYMENT = re.compile(r"deployment (\d+) -> (device|group) (\S+)")


def _tool(name: str) -> list[str]:
    exe = BIN / name
    return (
        [str(exe)]
        if exe.exists()
        else [sys.executable, "-m", f"edge_agent.{'cli' if name == 'edge-agent' else 'fleet.cli'}"]
    )


@dataclass
class Device:
    name: str
    folder: Path
    proc: subprocess.Popen | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.folder / "agent.log"

    def _text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def connects_after(self, t: float) -> list[float]:
        """Unix times of the ``connected to MQTT broker`` log lines after ``t``."""
        return [s for s in (_stamp(m.group(1)) for m in CONNECTED.finditer(self._text())) if s > t]

    def active_at(self, number: int, confirmed: bool) -> float | None:
        """When the daemon logged deployment ``number`` as active (or confirmed active): the device's own
        clock, not delayed by a busy broker or subscriber."""
        for m in STATE.finditer(self._text()):
            active = int(m.group(2)) == number and m.group(3) == "active"
            if active and (not confirmed or m.group(4).strip().startswith(CONFIRMED)):
                return _stamp(m.group(1))
        return None


class Fleet:
    """One broker, N daemons, an operator key; ``close()`` stops every process it started."""

    def __init__(self, work: Path, n: int, models: dict[str, Path], say: Any) -> None:
        from edge_agent.fleet.signing import generate_keypair

        self.work, self.n, self.models, self.say = work, n, models, say
        work.mkdir(parents=True, exist_ok=True)
        self.key, public, _ = generate_keypair(work / "operator")
        self.trusted = work / "trusted"
        self.trusted.mkdir()
        (self.trusted / "operator.pub").write_bytes(public.read_bytes())
        (work / "operator.pw").write_text("pw-operator\n")
        self.devices = [Device(f"sim-{i:03d}", work / f"sim-{i:03d}") for i in range(1, n + 1)]
        users = {"operator": "pw-operator", "fleetsim": "pw-fleetsim"} | {
            d.name: "pw-" + d.name for d in self.devices
        }
        acl = work / "acl"  # the shipped ACL, plus this script's read-only user
        acl.write_text(ACL.read_text() + "\nuser fleetsim\ntopic read $SYS/#\ntopic read edge/#\n")
        self.broker = Mosquitto(
            work / "broker",
            users=users,
            persistent=True,
            extra_config=(f"acl_file {acl}", f"message_size_limit {MSG_LIMIT}", "sys_interval 1"),
        )
        self.monitor: Monitor | None = None

    # -------------------------------------------------------------------------------------------- start
    def start(self, ready_timeout: float) -> float:
        """Broker, monitor, daemons; returns the seconds until every device was online and in the group."""
        self.broker.start()
        self.monitor = Monitor(self.broker.port, "fleetsim", "pw-fleetsim").start()
        t0 = time.monotonic()
        for d in self.devices:
            self._start_device(d)
            time.sleep(0.05)
        deadline = t0 + ready_timeout
        while True:
            ready = self.monitor.ready(GROUP)
            dead = [d.name for d in self.devices if d.proc is not None and d.proc.poll() is not None]
            if dead:
                raise click.ClickException(
                    f"daemon(s) exited during start: {dead}; see {self.devices[0].log.parent}"
                )
            if all(d.name in ready for d in self.devices):
                return time.monotonic() - t0
            if time.monotonic() > deadline:
                missing = [d.name for d in self.devices if d.name not in ready]
                raise click.ClickException(
                    f"{len(missing)} of {self.n} devices not online after {ready_timeout:.0f} s: "
                    f"{missing[:10]}"
                )
            time.sleep(0.2)

    def _start_device(self, d: Device) -> None:
        d.folder.mkdir(parents=True, exist_ok=True)
        (d.folder / "pw").write_text(f"pw-{d.name}\n")
        cfg = {
            "device_id": d.name,
            "mqtt": {
                "host": self.broker.host,
                "port": self.broker.port,
                "username": d.name,
                "password_file": str(d.folder / "pw"),
            },
            "state_dir": str(d.folder / "state"),
            "pipelines": [
                {
                    "name": PIPELINE,
                    "window": {"size": 2, "hop": 2},
                    "model": {"path": str(self.models["v1"])},
                    "source": {"type": "command", "argv": ["sh", "-c", FEED]},
                }
            ],
            "fleet": {"trusted_keys_dir": str(self.trusted), "groups": [GROUP]},
        }
        config = d.folder / "config.yaml"
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with d.log.open("ab") as log:  # its own session: the feed loop dies with it (killpg at the end)
            d.proc = subprocess.Popen(
                [*_tool("edge-agent"), "run", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=d.folder,
                start_new_session=True,
            )

    def daemons(self) -> list[psutil.Process]:
        out = []
        for d in self.devices:
            with contextlib.suppress(psutil.Error, AttributeError):
                out.append(psutil.Process(d.proc.pid))  # type: ignore[union-attr]
        return out

    def daemon_cpu_s(self) -> float:
        total = 0.0
        for p in self.daemons():
            with contextlib.suppress(psutil.Error):
                c = p.cpu_times()
                total += c.user + c.system
        return total

    def daemon_memory(self) -> dict[str, float]:
        rss = uss = 0
        for p in self.daemons():
            with contextlib.suppress(psutil.Error):
                m = p.memory_full_info()
                rss, uss = rss + m.rss, uss + m.uss
        mib = 1 << 20
        return {
            "rss_sum_mib": round(rss / mib, 1),
            "uss_sum_mib": round(uss / mib, 1),
            "rss_per_daemon_mib": round(rss / mib / max(1, self.n), 1),
        }

    # ------------------------------------------------------------------------------------------- deploy
    def deploy(self, healthy_for: str, timeout_s: float, idle_s: float) -> dict[str, Any]:
        mon = self.monitor
        assert mon is not None
        # The fleet's idle traffic (results, stats) over idle_s, to subtract from the deployment's bytes.
        b0, t_b0 = mon.sys_bytes(), time.time()
        time.sleep(idle_s)
        b1, t_b1 = mon.sys_bytes(), time.time()
        idle_rate = {k: (b1[k] - b0[k]) / (t_b1 - t_b0) for k in b0}
        broker = psutil.Process(self.broker.pid)
        cpu0, dcpu0 = _cpu(broker), self.daemon_cpu_s()
        sampler = RssSampler(broker).start()
        bytes0 = mon.sys_bytes()
        t0 = time.time()
        cmd = [
            *_tool("edge-fleet"),
            "deploy",
            str(self.models["v2"]),
            "--pipeline",
            PIPELINE,
            "--group",
            GROUP,
            "--canary",
            "1",
            "--healthy-for",
            healthy_for,
            "--timeout",
            f"{timeout_s:.0f}s",
            "--key",
            str(self.key),
            "--broker",
            f"{self.broker.host}:{self.broker.port}",
            "--username",
            "operator",
            "--password-file",
            str(self.work / "operator.pw"),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=2 * timeout_s + 60)
        except subprocess.TimeoutExpired:
            raise click.ClickException(
                f"edge-fleet deploy still running after {2 * timeout_s + 60:.0f} s"
            ) from None
        t_cli = time.time() - t0
        cpu1, dcpu1 = _cpu(broker), self.daemon_cpu_s()
        peak = sampler.stop()
        time.sleep(1.5)  # the $SYS counters are published every second
        bytes1, t1 = mon.sys_bytes(), time.time()
        (self.work / "deploy.out").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise click.ClickException(
                f"edge-fleet deploy failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        numbers = {(kind, name): int(num) for num, kind, name in DEPLOYMENT.findall(proc.stdout)}
        canary = next(name for kind, name in numbers if kind == "device")
        group_no = numbers[("group", GROUP)]

        by_name = {d.name: d for d in self.devices}

        def first(device: str, number: int, confirmed: bool) -> float | None:
            t = by_name[device].active_at(number, confirmed)
            return None if t is None else round(t - t0, 2)

        def seen(device: str, number: int) -> float | None:  # by the subscriber, as an operator sees it
            t = mon.first_state(device, number, "active", True)
            return None if t is None else round(t - t0, 2)

        group_active = [first(d.name, group_no, False) for d in self.devices]
        group_confirmed = [first(d.name, group_no, True) for d in self.devices]
        moved = {k: bytes1[k] - bytes0[k] for k in bytes0}
        return {
            "cli_s": round(t_cli, 2),
            "healthy_for": healthy_for,
            "canary": canary,
            "canary_active_s": first(canary, numbers[("device", canary)], False),
            "canary_confirmed_s": first(canary, numbers[("device", canary)], True),
            "all_active_s": _max(group_active),
            "all_confirmed_s": _max(group_confirmed),
            "all_confirmed_seen_s": _max([seen(d.name, group_no) for d in self.devices]),
            "group_active_s": percentiles([t for t in group_active if t is not None]),
            "devices_not_seen_active": sum(t is None for t in group_active),
            "broker_cpu_s": round(cpu1 - cpu0, 2),
            "broker_peak_rss_mib": round(peak / (1 << 20), 1),
            "broker_bytes": moved,
            "broker_bytes_idle_per_s": {k: round(v) for k, v in idle_rate.items()},
            "broker_bytes_over_idle": {k: round(moved[k] - idle_rate[k] * (t1 - t0)) for k in moved},
            "model_bytes": self.models["v2"].stat().st_size,
            "daemons_cpu_s": round(dcpu1 - dcpu0, 2),
            "daemons_memory": self.daemon_memory(),
        }

    # --------------------------------------------------------------------------------------------- storm
    def storm(self, outage_s: float, timeout_s: float) -> dict[str, Any]:
        t_stop = time.time()
        self.broker.stop(kill=False)
        time.sleep(outage_s)
        self.broker.start()
        t_up = time.time()
        broker = psutil.Process(self.broker.pid)
        sampler = RssSampler(broker).start()
        deadline = time.monotonic() + timeout_s
        back: dict[str, float] = {}
        while len(back) < self.n and time.monotonic() < deadline:
            for d in self.devices:
                if d.name not in back and (stamps := d.connects_after(t_stop)):
                    back[d.name] = stamps[0]
            time.sleep(0.25)
        cpu, peak = _cpu(broker), sampler.stop()
        delays = sorted(t - t_up for t in back.values())
        burst = max((sum(1 for x in delays if a <= x < a + 0.1) for a in delays), default=0)
        return {
            "outage_s": round(t_up - t_stop, 2),
            "reconnected": len(back),
            "delay_s": percentiles(delays),
            "max_in_100ms": burst,
            "histogram_0_5s": _histogram(delays, 0.5),
            "broker_cpu_s": round(cpu, 2),
            "broker_peak_rss_mib": round(peak / (1 << 20), 1),
            "all_back_s": round(max(delays), 2) if delays else None,
        }

    # --------------------------------------------------------------------------------------------- close
    def close(self) -> None:
        """SIGTERM every daemon's session (daemon + feed loop), wait, then SIGKILL what is left."""
        live = [d.proc for d in self.devices if d.proc is not None and d.proc.poll() is None]
        for p in live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for p in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.1, deadline - time.monotonic()))
        for d in self.devices:
            if d.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(d.proc.pid, signal.SIGKILL)  # the feed loop too, even if the daemon exited
                with contextlib.suppress(subprocess.TimeoutExpired):
                    d.proc.wait(5)
        if self.monitor is not None:
            self.monitor.close()
        self.broker.stop(kill=True)


def _stamp(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _cpu(p: psutil.Process) -> float:
    c = p.cpu_times()
    return c.user + c.system


def _max(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else max(v for v in values if v is not None)


def _histogram(delays: list[float], width: float) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in delays:
        lo = width * int(max(0.0, x) // width)
        key = f"{lo:g}-{lo + width:g}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: float(kv[0].split("-")[0])))


def run_one(n: int, work: Path, models: dict[str, Path], opts: dict[str, Any], say: Any) -> dict[str, Any]:
    need = n * 64 << 20  # a daemon: ~84 MiB RSS, ~36 MiB of it its own (USS); keep room
    if psutil.virtual_memory().available < need:
        raise click.ClickException(
            f"--devices {n}: needs ~{need >> 30} GiB free memory, "
            f"{psutil.virtual_memory().available >> 30} GiB available"
        )
    fleet = Fleet(Path(tempfile.mkdtemp(prefix=f"n{n}-", dir=work)), n, models, say)
    try:
        say(f"[{n}] starting mosquitto on 127.0.0.1:{fleet.broker.port} and {n} edge-agent daemons")
        startup = fleet.start(ready_timeout=60 + 3 * n)
        say(f"[{n}] all online in {startup:.1f} s; deploying v2 to group {GROUP!r} with --canary 1")
        deploy = fleet.deploy(opts["healthy_for"], opts["timeout"], opts["idle"])
        say(
            f"[{n}] all confirmed {deploy['all_confirmed_s']} s after the deploy started; "
            "restarting the broker"
        )
        storm = fleet.storm(opts["outage"], timeout_s=90)
        say(f"[{n}] {storm['reconnected']}/{n} reconnected, median {storm['delay_s']['median']} s")
        return {"devices": n, "startup_s": round(startup, 1), "deploy": deploy, "storm": storm}
    finally:
        fleet.close()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--devices", type=click.IntRange(1, 500), default=None, help="Simulate N devices.")
@click.option("--devices-list", default=None, help="Several runs, one after the other, e.g. 10,25,50.")
@click.option("--healthy-for", default="5s", show_default=True, help="Watch period of the deployment.")
@click.option(
    "--timeout", type=float, default=300, show_default=True, help="edge-fleet deploy --timeout (s)."
)
@click.option("--outage", type=float, default=2.0, show_default=True, help="Broker down this long (s).")
@click.option(
    "--idle", type=float, default=10.0, show_default=True, help="Idle traffic measured this long (s)."
)
@click.option(
    "--work",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Work folder (default: a new one under /tmp); models are made there once.",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(
    devices: int | None,
    devices_list: str | None,
    healthy_for: str,
    timeout: float,
    outage: float,
    idle: float,
    work: Path | None,
    json_path: Path | None,
) -> None:
    """N real edge-agent daemons, a canary group deployment and a broker restart; a table and JSON."""
    try:
        sizes = [devices] if devices else [int(x) for x in (devices_list or "").split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter("write e.g. 10,25,50", param_hint="--devices-list") from None
    if not sizes or any(n < 1 for n in sizes):
        raise click.UsageError("give --devices N or --devices-list 10,50")
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop everything on SIGTERM as on Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (&)
    if work is None:
        work = Path(tempfile.mkdtemp(prefix="fleet-sim-"))
    work.mkdir(parents=True, exist_ok=True)
    say = lambda s: click.echo(s, err=True)  # noqa: E731
    say(f"work folder: {work}")
    made = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "fleet_sim_models.py"), str(work / "models")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if made.returncode != 0:
        raise click.ClickException(f"making the models failed:\n{made.stderr[-2000:]}")
    models = {k: Path(v) for k, v in json.loads(made.stdout.splitlines()[-1]).items()}
    opts = {"healthy_for": healthy_for, "timeout": timeout, "outage": outage, "idle": idle}
    runs = []
    try:
        for n in sizes:
            runs.append(run_one(n, work, models, opts, say))
    except KeyboardInterrupt:
        say("interrupted; every process this run started is stopped")
        raise SystemExit(130) from None
    except (RuntimeError, OSError, EdgeAgentError) as exc:  # a broker that would not start, a full disk...
        raise click.ClickException(f"{exc} (work folder {work})") from None
    report = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "scripts/fleet-sim " + " ".join(sys.argv[1:]),
        "machine": machine()
        | {
            "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
            "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "setup": {
            "broker": f"mosquitto, 127.0.0.1, shipped ACL, persistence on, message_size_limit {MSG_LIMIT}",
            "daemon": "edge-agent run, sensor pipeline, command source (1 line/0.5 s), "
            "int8 Dense(6->2) model, fleet on, group 'sim', mqtt reconnect 1..30 s (defaults)",
            "healthy_for": healthy_for,
            "outage_s": outage,
        },
        "runs": runs,
    }
    click.echo(table(runs))
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        say(f"JSON: {json_path}")


if __name__ == "__main__":
    main()
