"""What this device has, read from /proc, /sys and /dev (each root can be moved, so a test or a support
engineer can point it at a copied tree): cameras, IIO sensors, serial ports, runtimes (from package
metadata; TensorFlow only imported when asked: it costs seconds and hundreds of MB), the Edge TPU, the
board, CPU, memory, temperatures. Used by ``edge-agent probe`` and the installer's camera detection.
"""

from __future__ import annotations

import ctypes.util
import glob
import os
import platform
import shutil
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path

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
    # udev's names that survive re-plugging and reboots, where video0 and video2 may swap: by-id follows the
    # camera (its vendor, model and serial), by-path the USB port it is in
    by_id: str | None = None
    by_path: str | None = None


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
    simd: list[str] = field(default_factory=list)  # SIMD_FEATURES the CPU has


SYSFS_ROOT_ENV = "EDGE_AGENT_SYSFS_ROOT"  # the installer's camera scan reads the same two names
DEV_ROOT_ENV = "EDGE_AGENT_DEV_ROOT"
PROC_ROOT_ENV = "EDGE_AGENT_PROC_ROOT"


@dataclass(frozen=True)
class Roots:
    """Where /sys, /dev and /proc are: moved for tests and copied trees."""

    sysfs: Path = Path("/sys")
    dev: Path = Path("/dev")
    proc: Path = Path("/proc")
    etc: Path = Path("/etc")

    @classmethod
    def from_environment(cls) -> Roots:
        """The roots as probe sees them without options: so check and probe look at the same (moved) tree."""
        env = os.environ
        return cls(
            sysfs=Path(env.get(SYSFS_ROOT_ENV, "/sys")),
            dev=Path(env.get(DEV_ROOT_ENV, "/dev")),
            proc=Path(env.get(PROC_ROOT_ENV, "/proc")),
        )


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


def _links(folder: Path) -> dict[str, str]:
    """{what a link resolves to: the link's name} for the links in ``folder`` (udev's /dev/v4l/by-id)."""
    return {os.path.realpath(link): os.path.basename(link) for link in sorted(glob.glob(str(folder / "*")))}


def probe_cameras(roots: Roots, open_devices: bool = True) -> list[Camera]:
    """V4L2 nodes with their sysfs names and udev's stable names; with OpenCV installed, the format a capture
    actually delivers."""
    by_id, by_path = _links(roots.dev / "v4l" / "by-id"), _links(roots.dev / "v4l" / "by-path")
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
            camera = Camera(str(node), name, idx, None, note="not a character device: not opened")
        elif not open_devices:
            camera = Camera(str(node), name, idx, None, note="not opened (--no-open)")
        else:
            camera = _open_camera(str(node), name, idx)
        real = os.path.realpath(node)
        cameras.append(replace(camera, by_id=by_id.get(real), by_path=by_path.get(real)))
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
    from edge_agent.sources.camera import fourcc_text

    cap = cv2.VideoCapture(device, cv2.CAP_V4L2)
    try:
        if not cap.isOpened():
            return Camera(
                device, name, index, False, note="cannot open: busy, no permission, or not a capture node"
            )
        ok, frame = cap.read()
        fourcc = fourcc_text(cap.get(cv2.CAP_PROP_FOURCC))
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


# The CPU features that pick XNNPACK's int8 and float kernels: x86's AVX2, AVX-512 and VNNI; Arm's dot
# product (asimddp: a Pi 5's Cortex-A76 and a Jetson Orin's A78AE have it, a Pi 4's A72 does not), int8
# matrix multiply and half precision. Two CPUs of the same name can differ here, and an int8 model's
# invoke with them: MobileNetV2-int8 took 3.2 ms with AVX-512 VNNI and 10.2 with AVX2 only on "AMD EPYC".
SIMD_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "asimddp", "i8mm", "asimdhp")


def simd_features(cpuinfo: str) -> list[str]:
    """Those of SIMD_FEATURES that /proc/cpuinfo's text lists (x86 'flags', Arm 'Features'), in that order."""
    listed: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            listed.update(value.split())
    return [f for f in SIMD_FEATURES if f in listed]


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
        simd=simd_features(_read(roots.proc / "cpuinfo") or ""),
    )
