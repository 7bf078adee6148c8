"""``edge-agent probe``: what this device has, for writing its config.

Everything is read from /proc, /sys and /dev (each root can be moved, so a test or a support engineer can
point it at a copied tree), runtimes are found from package metadata (TensorFlow is only imported when
asked: it costs seconds and hundreds of MB), and the broker is tried with a real MQTT CONNECT.
"""

from __future__ import annotations

import ctypes.util
import glob
import json
import os
import platform
import shutil
import socket
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from edge_agent.errors import ConfigError

DEFAULT_CONFIG = Path("/etc/edge-agent/config.yaml")
DEFAULT_STATE_DIR = Path("/var/lib/edge-agent")
DEFAULT_UNIT = Path("/etc/systemd/system/edge-agent.service")

# Coral USB Accelerator: Global Unichip id before its firmware is loaded, Google id after.
EDGETPU_USB_IDS = {
    ("1a6e", "089a"): "Coral USB Accelerator (firmware not loaded yet)",
    ("18d1", "9302"): "Coral USB Accelerator",
}
EDGETPU_LIBRARY_DIRS = (
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib",
    "/usr/local/lib",
)
SERIAL_PATTERNS = ("ttyUSB*", "ttyACM*", "ttyAMA*", "serial0", "serial1")

# ARM "CPU part" ids of the cores found on Pi and Jetson boards (/proc/cpuinfo shows only the number).
ARM_CORES = {
    "0xd03": "Cortex-A53",
    "0xd04": "Cortex-A35",
    "0xd05": "Cortex-A55",
    "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72",
    "0xd09": "Cortex-A73",
    "0xd0a": "Cortex-A75",
    "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1",
    "0xd41": "Cortex-A78",
    "0xd42": "Cortex-A78AE",
    "0x004": "Carmel (NVIDIA)",
}


# ---------------------------------------------------------------------------------------------- findings


@dataclass(frozen=True)
class Camera:
    device: str
    name: str | None  # V4L2 card name from sysfs
    index: int | None  # sysfs 'index': 0 is usually the capture node of a USB camera, 1 its metadata node
    opened: bool | None  # None: not tried
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    fourcc: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class IioChannel:
    name: str  # accel_x for in_accel_x_raw
    raw: str | None
    scale: str | None


@dataclass(frozen=True)
class IioDevice:
    device: str  # iio:device0
    name: str | None  # its 'name' attribute (adxl345); the config accepts either
    channels: list[IioChannel]
    sampling_frequency: str | None


@dataclass(frozen=True)
class SerialPort:
    device: str
    target: str | None  # what a symlink (serial0) points at
    by_id: str | None  # /dev/serial/by-id name, which survives re-plugging


@dataclass(frozen=True)
class Runtime:
    name: str
    version: str | None  # None: not installed
    imports: bool | None  # None: not tried
    error: str | None = None


@dataclass(frozen=True)
class EdgeTpu:
    library: str | None
    usb: list[str]
    pcie: list[str]


@dataclass(frozen=True)
class System:
    arch: str
    cpu_model: str | None
    cores: int
    usable_cores: int
    memory_total_mb: int | None
    memory_available_mb: int | None
    board: str | None
    jetson_release: str | None
    python: str
    disk_free_mb: int | None
    disk_path: str
    temperatures_c: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    tls: bool
    username: str | None
    reachable: bool
    connected: bool
    result: str  # what happened, in words
    source: str  # where the address came from
    hint: str | None = None  # what to do about a refusal


@dataclass(frozen=True)
class Roots:
    """Where /sys, /dev and /proc are: moved for tests and copied trees."""

    sysfs: Path = Path("/sys")
    dev: Path = Path("/dev")
    proc: Path = Path("/proc")
    etc: Path = Path("/etc")


# ---------------------------------------------------------------------------------------------- readers


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip().strip("\x00").strip()
    except OSError:
        return None


def _sorted_nodes(paths: list[str]) -> list[str]:
    """video2 before video10."""

    def key(p: str) -> tuple[str, int]:
        stem = p.rstrip("0123456789")
        digits = p[len(stem) :]
        return stem, int(digits) if digits else -1

    return sorted(paths, key=key)


def probe_cameras(roots: Roots, open_devices: bool = True) -> list[Camera]:
    """V4L2 nodes with their sysfs names; with OpenCV installed, the format a capture actually delivers."""
    cameras = []
    for dev in _sorted_nodes(glob.glob(str(roots.dev / "video*"))):
        node = Path(dev)
        sys_dir = roots.sysfs / "class" / "video4linux" / node.name
        index = _read(sys_dir / "index")
        name, idx = _read(sys_dir / "name"), int(index) if index and index.isdigit() else None
        try:
            is_char = stat.S_ISCHR(node.stat().st_mode)
        except OSError:
            is_char = False
        if not is_char:
            cameras.append(Camera(str(node), name, idx, None, note="not a character device: not opened"))
        elif not open_devices:
            cameras.append(Camera(str(node), name, idx, None, note="not opened (--no-open)"))
        else:
            cameras.append(_open_camera(str(node), name, idx))
    return cameras


def _open_camera(device: str, name: str | None, index: int | None) -> Camera:
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # a metadata node makes OpenCV warn on stderr
    try:
        import cv2
    except ImportError:
        return Camera(
            device,
            name,
            index,
            None,
            note="install 'edge-agent[camera]' (OpenCV) to see its format and resolution",
        )
    cap = cv2.VideoCapture(device, cv2.CAP_V4L2)
    try:
        if not cap.isOpened():
            return Camera(
                device, name, index, False, note="cannot open: busy, no permission, or not a capture node"
            )
        ok, frame = cap.read()
        code = int(cap.get(cv2.CAP_PROP_FOURCC))
        fourcc = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00") or None
        fps = cap.get(cv2.CAP_PROP_FPS) or None
        if not ok or frame is None:
            return Camera(device, name, index, True, fourcc=fourcc, note="opened but delivered no frame")
        return Camera(
            device,
            name,
            index,
            True,
            width=int(frame.shape[1]),
            height=int(frame.shape[0]),
            fps=round(fps, 2) if fps else None,
            fourcc=fourcc,
        )
    finally:
        cap.release()


def probe_iio(roots: Roots) -> list[IioDevice]:
    devices = []
    for d in sorted(glob.glob(str(roots.sysfs / "bus" / "iio" / "devices" / "iio:device*"))):
        path = Path(d)
        channels = []
        for raw in sorted(path.glob("in_*_raw")):
            ch = raw.name[len("in_") : -len("_raw")]
            scale = _read(path / f"in_{ch}_scale")
            if scale is None:  # shared scale: in_accel_scale for in_accel_x_raw
                scale = _read(path / f"in_{ch.rsplit('_', 1)[0]}_scale")
            channels.append(IioChannel(ch, _read(raw), scale))
        devices.append(
            IioDevice(path.name, _read(path / "name"), channels, _read(path / "sampling_frequency"))
        )
    return devices


def probe_serial(roots: Roots) -> list[SerialPort]:
    by_id: dict[str, str] = {}
    for link in glob.glob(str(roots.dev / "serial" / "by-id" / "*")):
        by_id[os.path.basename(os.path.realpath(link))] = os.path.basename(link)
    ports = []
    seen: set[str] = set()
    for pattern in SERIAL_PATTERNS:
        for dev in _sorted_nodes(glob.glob(str(roots.dev / pattern))):
            if dev in seen:
                continue
            seen.add(dev)
            node = Path(dev)
            target = os.readlink(dev) if node.is_symlink() else None
            real = os.path.basename(target) if target else node.name
            ports.append(SerialPort(str(node), target, by_id.get(real)))
    return ports


def probe_runtimes(import_tensorflow: bool = False) -> list[Runtime]:
    """Installed TFLite runtimes and whether they import; TensorFlow is only imported when asked."""
    from edge_agent.errors import DependencyError
    from edge_agent.runtime.backends import AUTO_ORDER, available_runtimes, import_runtime

    found = available_runtimes()
    runtimes = []
    for name in AUTO_ORDER:
        version = found.get(name)
        if version is None:
            runtimes.append(Runtime(name, None, None))
        elif name == "tensorflow" and not import_tensorflow:
            runtimes.append(
                Runtime(name, version, None, "not imported (slow, large): add --import-tensorflow")
            )
        else:
            try:
                import_runtime(name)
                runtimes.append(Runtime(name, version, True))
            except (DependencyError, ImportError, OSError) as exc:
                runtimes.append(Runtime(name, version, False, str(exc).splitlines()[0]))
    return runtimes


def probe_edgetpu(roots: Roots) -> EdgeTpu:
    from edge_agent.runtime.delegates import EDGETPU_LIBRARY

    library = next(
        (
            str(Path(d) / EDGETPU_LIBRARY)
            for d in EDGETPU_LIBRARY_DIRS
            if (Path(d) / EDGETPU_LIBRARY).exists()
        ),
        None,
    )
    if library is None and ctypes.util.find_library("edgetpu"):
        library = ctypes.util.find_library("edgetpu")
    usb = []
    for d in sorted(glob.glob(str(roots.sysfs / "bus" / "usb" / "devices" / "*"))):
        ids = (_read(Path(d) / "idVendor"), _read(Path(d) / "idProduct"))
        if ids in EDGETPU_USB_IDS:
            usb.append(f"{os.path.basename(d)} {ids[0]}:{ids[1]} {EDGETPU_USB_IDS[ids]}")  # type: ignore[index]
    pcie = _sorted_nodes(glob.glob(str(roots.dev / "apex_*")))
    return EdgeTpu(library, usb, pcie)


def _cpuinfo(roots: Roots) -> dict[str, str]:
    """The first value of each key in /proc/cpuinfo (x86 'model name'; ARM 'CPU part', 'Model')."""
    info: dict[str, str] = {}
    for line in (_read(roots.proc / "cpuinfo") or "").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info.setdefault(key.strip(), value.strip())
    return info


def _meminfo_mb(roots: Roots) -> dict[str, int]:
    out = {}
    for line in (_read(roots.proc / "meminfo") or "").splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) // 1024  # kB
    return out


def probe_board(roots: Roots) -> tuple[str | None, str | None]:
    """(board model, Jetson L4T release): device tree first, then /proc/cpuinfo's 'Model' (Pi)."""
    model = _read(roots.sysfs / "firmware" / "devicetree" / "base" / "model") or _read(
        roots.proc / "device-tree" / "model"
    )
    if not model:
        model = _cpuinfo(roots).get("Model")
    release = _read(roots.etc / "nv_tegra_release")
    return model or None, release.splitlines()[0].lstrip("# ").strip() if release else None


def probe_temperatures(roots: Roots) -> dict[str, float]:
    temps = {}
    for zone in _sorted_nodes(glob.glob(str(roots.sysfs / "class" / "thermal" / "thermal_zone*"))):
        raw = _read(Path(zone) / "temp")
        if raw and raw.lstrip("-").isdigit():
            kind = _read(Path(zone) / "type") or os.path.basename(zone)
            temps[f"{os.path.basename(zone)} ({kind})"] = int(raw) / 1000.0  # millidegrees Celsius
    return temps


def probe_system(roots: Roots, state_dir: Path = DEFAULT_STATE_DIR) -> System:
    info = _cpuinfo(roots)
    cpu = info.get("model name") or info.get("Processor")
    if not cpu and info.get("CPU part"):
        cpu = ARM_CORES.get(info["CPU part"].lower(), f"ARM part {info['CPU part']}")
    mem = _meminfo_mb(roots)
    board, jetson = probe_board(roots)
    disk_path = state_dir if state_dir.exists() else Path("/")
    try:
        free = shutil.disk_usage(disk_path).free // (1024 * 1024)
    except OSError:
        free = None
    return System(
        arch=platform.machine(),
        cpu_model=cpu,
        cores=os.cpu_count() or 1,
        usable_cores=len(os.sched_getaffinity(0)),
        memory_total_mb=mem.get("MemTotal"),
        memory_available_mb=mem.get("MemAvailable"),
        board=board,
        jetson_release=jetson,
        python=platform.python_version(),
        disk_free_mb=free,
        disk_path=str(disk_path),
        temperatures_c=probe_temperatures(roots),
    )


# ---------------------------------------------------------------------------------------------- broker


def check_broker(target: BrokerTarget, timeout: float) -> Broker:
    """TCP connect, then a real MQTT CONNECT with the configured credentials and TLS; never publishes.

    The client is the daemon's own (``build_client``): same protocol, TLS checks and login."""
    import paho.mqtt.client as mqtt

    from edge_agent.publish.client import build_client, credentials_hint, refusal_hint

    mqtt_cfg, password = target.mqtt, target.password
    host, port, tls = mqtt_cfg.host, mqtt_cfg.port, mqtt_cfg.tls is not None

    def broker(reachable: bool, connected: bool, result: str, hint: str | None = None) -> Broker:
        return Broker(host, port, tls, mqtt_cfg.username, reachable, connected, result, target.source, hint)

    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return broker(False, False, f"unreachable: {exc.strerror or exc}")
    if target.login_problem:
        return broker(True, False, f"reachable; login not tried: {target.login_problem}")
    try:
        client = build_client(mqtt_cfg, f"edge-agent-probe-{os.getpid()}", password=password)
    except ConfigError as exc:
        return broker(True, False, f"reachable; connect not tried: {exc}")
    client.connect_timeout = timeout
    answer: dict[str, Any] = {}
    client.on_connect = lambda _c, _u, _f, reason, _p: answer.setdefault("reason", reason)
    try:
        client.connect(host, port, keepalive=max(5, int(timeout) + 5))
        deadline = time.monotonic() + timeout
        while "reason" not in answer and time.monotonic() < deadline:
            if client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
                break
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        return broker(True, False, f"connect failed: {exc}")
    finally:
        client.disconnect()
    reason = answer.get("reason")
    if reason is None:
        return broker(True, False, f"no MQTT answer within {timeout:g}s (is it an MQTT port? TLS expected?)")
    if reason.is_failure:
        login = "" if mqtt_cfg.username else f" ({credentials_hint(mqtt_cfg)})"
        return broker(True, False, f"refused: {reason}{login}", refusal_hint(str(reason), mqtt_cfg))
    who = f"as {mqtt_cfg.username}" if mqtt_cfg.username else "anonymously"
    return broker(True, True, f"connected {who}")


@dataclass(frozen=True)
class BrokerTarget:
    mqtt: Any  # MqttConfig
    password: str | None
    source: str  # where the address came from
    login_problem: str | None = None  # why the configured password could not be read


def broker_target(config: Path | None, host: str | None, port: int | None) -> BrokerTarget | None:
    """The broker to try and the password the service would use; None when there is nothing to check.

    Outside the service, a ``password_credential`` is read from the file that the unit's LoadCredential=
    names (root only, mode 0600), through the daemon's one credential resolver."""
    from edge_agent.config import load_config
    from edge_agent.publish.client import resolve_password
    from edge_agent.publish.config import MqttConfig

    if config is None and host is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    if config is not None:
        mqtt_cfg = load_config(config).mqtt
        source = str(config)
    elif host is not None:
        mqtt_cfg, source = MqttConfig(host=host), "--host"
    else:
        return None
    updates: dict[str, Any] = {}
    if host is not None:
        updates["host"] = host
    if port is not None:
        updates["port"] = port
    if updates:
        mqtt_cfg = mqtt_cfg.model_copy(update=updates)
    try:
        return BrokerTarget(mqtt_cfg, resolve_password(mqtt_cfg, unit=DEFAULT_UNIT), source)
    except ConfigError as exc:
        return BrokerTarget(mqtt_cfg, None, source, str(exc))


def suggest_sources(report: dict[str, Any], roots: Roots) -> list[dict[str, Any]]:
    """``source:`` entries for the config, one per usable device, built through the config's own classes
    (so every key is one the daemon accepts)."""
    from edge_agent.sources.camera import CameraSourceConfig
    from edge_agent.sources.iio import IioSourceConfig
    from edge_agent.sources.serial_lines import SerialSourceConfig

    def entry(cfg: Any) -> dict[str, Any]:
        return {"type": cfg.type, **cfg.model_dump(mode="json", exclude_defaults=True)}

    out = []
    for cam in report["cameras"]:
        if cam.opened or (cam.opened is None and cam.index in (0, None)):  # index 1 is a UVC metadata node
            out.append(entry(CameraSourceConfig(url=cam.device)))
    iio_root = roots.sysfs / "bus" / "iio" / "devices"
    for dev in report["iio"]:
        if dev.channels:
            extra = {} if iio_root == Path("/sys/bus/iio/devices") else {"sysfs_root": str(iio_root)}
            out.append(
                entry(
                    IioSourceConfig(
                        device=dev.name or dev.device, channels=[c.name for c in dev.channels], **extra
                    )
                )
            )
    for port in report["serial"]:
        by_id = roots.dev / "serial" / "by-id" / port.by_id if port.by_id else None
        out.append(entry(SerialSourceConfig(port=str(by_id or port.device))))  # by-id survives re-plugging
    return out


# ---------------------------------------------------------------------------------------------- output


def _table(title: str, header: list[str], rows: list[list[Any]], empty: str) -> str:
    lines = [title]
    if not rows:
        return f"{title}\n  {empty}"
    cells = [[("-" if c is None else str(c)) for c in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render(report: dict[str, Any]) -> str:
    s: System = report["system"]
    mem = (
        f"{s.memory_available_mb} MB available of {s.memory_total_mb} MB"
        if s.memory_total_mb is not None
        else None
    )
    sections = [
        _table(
            "System",
            ["item", "value"],
            [
                ["board", s.board or "unknown (not a Raspberry Pi or Jetson?)"],
                *([["jetson", s.jetson_release]] if s.jetson_release else []),
                ["arch", s.arch],
                ["cpu", s.cpu_model],
                ["cores", f"{s.cores} ({s.usable_cores} usable by this process)"],
                ["memory", mem],
                [
                    "disk free",
                    f"{s.disk_free_mb} MB at {s.disk_path}" if s.disk_free_mb is not None else None,
                ],
                ["python", s.python],
                *[[f"temp {zone}", f"{c:.1f} C"] for zone, c in s.temperatures_c.items()],
            ],
            "",
        )
    ]
    sections.append(
        _table(
            "Cameras",
            ["device", "name", "index", "format", "note"],
            [
                [
                    c.device,
                    c.name,
                    c.index,
                    f"{c.width}x{c.height} {c.fourcc or ''} {c.fps or ''}".strip() if c.width else c.fourcc,
                    c.note,
                ]
                for c in report["cameras"]
            ],
            "no cameras found",
        )
    )
    sections.append(
        _table(
            "IIO sensors",
            ["device", "name", "channels", "sampling_frequency"],
            [
                [
                    d.device,
                    d.name,
                    ", ".join(f"{ch.name}={ch.raw}" for ch in d.channels) or "(no in_*_raw channels)",
                    d.sampling_frequency,
                ]
                for d in report["iio"]
            ],
            "no IIO devices found",
        )
    )
    sections.append(
        _table(
            "Serial ports",
            ["device", "points to", "by-id"],
            [[p.device, p.target, p.by_id] for p in report["serial"]],
            "no serial ports found",
        )
    )
    sections.append(
        _table(
            "Runtimes (auto picks the first that imports)",
            ["runtime", "version", "imports", "note"],
            [
                [
                    r.name,
                    r.version or "not installed",
                    {True: "yes", False: "NO", None: "-"}[r.imports],
                    r.error,
                ]
                for r in report["runtimes"]
            ],
            "",
        )
    )
    tpu: EdgeTpu = report["edgetpu"]
    sections.append(
        _table(
            "Edge TPU",
            ["item", "value"],
            [
                ["library", tpu.library or "libedgetpu.so.1 not found (apt install libedgetpu1-std)"],
                ["usb", "; ".join(tpu.usb) or "none"],
                ["pcie", ", ".join(tpu.pcie) or "none"],
            ],
            "",
        )
    )
    b: Broker | None = report["broker"]
    if b is None:
        sections.append("MQTT broker\n  not checked: give --config FILE or --host HOST")
    else:
        sections.append(
            _table(
                "MQTT broker",
                ["item", "value"],
                [
                    ["address", f"{b.host}:{b.port}{' (TLS)' if b.tls else ''} from {b.source}"],
                    ["reachable", "yes" if b.reachable else "NO"],
                    ["connect", b.result],
                    *([["what to do", b.hint]] if b.hint else []),
                ],
                "",
            )
        )
    suggestions = report.get("sources") or []
    lines = [f"  source: {json.dumps(src)}" for src in suggestions]
    sections.append(
        "Config sources (pipelines[].source; add a window: for sensors)\n"
        + ("\n".join(lines) if lines else "  nothing found to suggest")
    )
    return "\n\n".join(sections)


def to_json(report: dict[str, Any]) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        if hasattr(v, "__dataclass_fields__"):
            return asdict(v)
        return [plain(x) for x in v] if isinstance(v, list) else v

    return {k: plain(v) for k, v in report.items()}


@click.command(name="probe")
@click.option(
    "--config",
    "config",
    type=click.Path(path_type=Path, dir_okay=False),
    help=f"Config whose mqtt section is checked (default: {DEFAULT_CONFIG} when it exists).",
)
@click.option("--host", help="Broker host to check (overrides the config's).")
@click.option("--port", type=click.IntRange(1, 65535), help="Broker port (overrides the config's).")
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 60),
    default=3.0,
    show_default=True,
    help="Seconds to wait for the broker.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--no-open", is_flag=True, help="Do not open cameras (e.g. while the daemon uses them).")
@click.option("--import-tensorflow", is_flag=True, help="Also import TensorFlow to check it (slow).")
@click.option(
    "--sysfs-root",
    type=click.Path(path_type=Path, file_okay=False),
    default="/sys",
    envvar="EDGE_AGENT_SYSFS_ROOT",
    show_default=True,
    help="Where sysfs is mounted.",
)
@click.option(
    "--dev-root",
    type=click.Path(path_type=Path, file_okay=False),
    default="/dev",
    envvar="EDGE_AGENT_DEV_ROOT",
    show_default=True,
    help="Where device nodes are.",
)
@click.option(
    "--proc-root",
    type=click.Path(path_type=Path, file_okay=False),
    default="/proc",
    envvar="EDGE_AGENT_PROC_ROOT",
    show_default=True,
    help="Where procfs is mounted.",
)
def command(
    config: Path | None,
    host: str | None,
    port: int | None,
    timeout: float,
    as_json: bool,
    no_open: bool,
    import_tensorflow: bool,
    sysfs_root: Path,
    dev_root: Path,
    proc_root: Path,
) -> None:
    """List what this device has: cameras, IIO sensors, serial ports, runtimes, Edge TPU, CPU, broker."""
    if port is not None and host is None and config is None and not DEFAULT_CONFIG.is_file():
        raise click.UsageError("--port needs --host or --config")
    target = broker_target(config, host, port)
    roots = Roots(sysfs=sysfs_root, dev=dev_root, proc=proc_root)
    report: dict[str, Any] = {
        "system": probe_system(roots),
        "cameras": probe_cameras(roots, open_devices=not no_open),
        "iio": probe_iio(roots),
        "serial": probe_serial(roots),
        "runtimes": probe_runtimes(import_tensorflow),
        "edgetpu": probe_edgetpu(roots),
        "broker": check_broker(target, timeout) if target else None,
    }
    report["sources"] = suggest_sources(report, roots)
    if as_json:
        click.echo(json.dumps(to_json(report), indent=2))
    else:
        click.echo(render(report))
