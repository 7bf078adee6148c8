"""``edge-agent probe``'s report: config ``source:`` suggestions, the human-readable tables, the JSON."""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edge_agent.commands.probe_broker import Broker
from edge_agent.commands.probe_device import Camera, EdgeTpu, Roots, System


def suggest_sources(report: dict[str, Any], roots: Roots) -> list[dict[str, Any]]:
    """``source:`` entries for the config, one per usable device, built through the config's own classes
    (so every key is one the daemon accepts)."""
    from edge_agent.sources.camera import CameraSourceConfig
    from edge_agent.sources.iio import IioSourceConfig
    from edge_agent.sources.serial_lines import SerialSourceConfig

    def entry(cfg: Any) -> dict[str, Any]:
        return {"type": cfg.type, **cfg.model_dump(mode="json", exclude_defaults=True)}

    capture = capture_nodes(report["cameras"])
    out = [entry(CameraSourceConfig(url=steadiest_name(cam, capture, roots))) for cam in capture]
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
    # One suggestion per port, by its steadiest name: a by-id link survives re-plugging, an alias (the Pi's
    # serial0) a board change; two names of one port in a config are refused (it serves one reader).
    serial: dict[str, tuple[int, dict[str, Any]]] = {}
    for port in report["serial"]:
        by_id = roots.dev / "serial" / "by-id" / port.by_id if port.by_id else None
        rank = 2 if by_id else 1 if port.target else 0
        suggested = entry(SerialSourceConfig(port=str(by_id or port.device)))
        real = os.path.realpath(port.device)
        if real not in serial or rank > serial[real][0]:
            serial[real] = (rank, suggested)
    return out + [suggested for _, suggested in serial.values()]


# V4L2 nodes that are no camera: the Pi's codec, ISP and HEVC nodes, which every Pi has (scripts/install
# skips the same names when it looks for a camera)
PLATFORM_NODES = ("bcm2835-codec*", "bcm2835-isp*", "rpi-hevc*", "pispbe*", "*-enc", "*-dec")


def capture_nodes(cameras: list[Camera]) -> list[Camera]:
    """The nodes that give frames: opened, or not tried, no codec node and first of their camera (a UVC
    camera's second node, index 1, carries metadata)."""
    return [
        c
        for c in cameras
        if c.opened
        or (
            c.opened is None
            and c.index in (0, None)
            and not any(fnmatch.fnmatchcase(c.name or "", p) for p in PLATFORM_NODES)
        )
    ]


def steadiest_name(cam: Camera, capture: list[Camera], roots: Roots) -> str:
    """A camera by the name that stays its own: /dev/video0 and /dev/video2 may swap at the next boot or
    re-plug; udev's by-id link follows the camera, its by-path link the USB port. Two cameras of one model
    without serial numbers share one by-id name (udev points it at one of them), so then the port names
    them."""
    twin_without_id = any(o is not cam and o.name == cam.name and o.by_id is None for o in capture)
    if cam.by_id and not twin_without_id:
        return str(roots.dev / "v4l" / "by-id" / cam.by_id)
    if cam.by_path:
        return str(roots.dev / "v4l" / "by-path" / cam.by_path)
    return cam.device


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
                ["simd", " ".join(s.simd) or "none that speed up int8 (AVX2, VNNI, Arm dot product)"],
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
            ["device", "name", "index", "format", "stable name (/dev/v4l/)", "note"],
            [
                [
                    c.device,
                    c.name,
                    c.index,
                    f"{c.width}x{c.height} {c.fourcc or ''} {c.fps or ''}".strip() if c.width else c.fourcc,
                    f"by-id/{c.by_id}" if c.by_id else f"by-path/{c.by_path}" if c.by_path else None,
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
