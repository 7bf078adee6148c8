"""edge-agent probe: this machine's runtime and a real mosquitto; cameras, sensors, ports, board and Edge TPU
from a sysfs/dev/proc-shaped folder (the only fake: this machine has no such hardware)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_agent.commands import probe, probe_broker
from tests.fixtures.broker import free_port

PI_CPUINFO = (
    "".join(
        f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
        "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
        "CPU part\t: 0xd08\nCPU revision\t: 3\n\n"
        for i in range(4)
    )
    + "Hardware\t: BCM2835\nRevision\t: c03114\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
)


USB_PORT = "platform-fd500000.pcie-pci-0000:01:00.0-usb-0:1.3:1.0"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def empty_roots(tmp_path: Path) -> list[str]:
    """A machine with nothing attached: empty /sys and /dev, this machine's /proc."""
    (tmp_path / "sys").mkdir()
    (tmp_path / "dev").mkdir()
    return ["--sysfs-root", str(tmp_path / "sys"), "--dev-root", str(tmp_path / "dev")]


@pytest.fixture
def pi_tree(tmp_path: Path) -> Path:
    """A Raspberry Pi 4: an ADXL345 on IIO, a USB camera, serial ports, a Coral USB stick, a thermal zone."""
    sys_ = tmp_path / "sys"
    dev = tmp_path / "dev"
    iio = sys_ / "bus/iio/devices/iio:device0"
    write(iio / "name", "adxl345\n")
    for axis, raw in zip("xyz", ("12", "-7", "255"), strict=True):
        write(iio / f"in_accel_{axis}_raw", raw + "\n")
    write(iio / "in_accel_scale", "0.038300\n")  # shared scale of the three channels
    write(iio / "sampling_frequency", "100.000000\n")
    write(iio / "in_temp_raw", "310\n")
    write(iio / "in_temp_scale", "0.5\n")
    write(sys_ / "class/video4linux/video0/name", "HD Pro Webcam C920\n")
    write(sys_ / "class/video4linux/video0/index", "0\n")
    write(sys_ / "class/video4linux/video1/name", "HD Pro Webcam C920\n")
    write(sys_ / "class/video4linux/video1/index", "1\n")
    write(dev / "video0", "")
    # a real character device that is not a camera: OpenCV must fail to open it, and probe must say so
    (dev / "video1").symlink_to("/dev/null")
    # udev's stable names of the webcam's two nodes (as on a Pi 4: its USB 3 controller sits on PCIe)
    (dev / "v4l/by-id").mkdir(parents=True)
    (dev / "v4l/by-path").mkdir(parents=True)
    for node in (0, 1):
        (dev / f"v4l/by-id/usb-046d_HD_Pro_Webcam_C920_9F5A3B2C-video-index{node}").symlink_to(
            f"../../video{node}"
        )
        (dev / f"v4l/by-path/{USB_PORT}-video-index{node}").symlink_to(f"../../video{node}")
    write(dev / "ttyUSB0", "")
    write(dev / "ttyAMA0", "")
    (dev / "serial0").symlink_to("ttyAMA0")
    (dev / "serial/by-id").mkdir(parents=True)
    (dev / "serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0").symlink_to("../../ttyUSB0")
    write(sys_ / "class/thermal/thermal_zone0/temp", "48312\n")
    write(sys_ / "class/thermal/thermal_zone0/type", "cpu-thermal\n")
    write(sys_ / "firmware/devicetree/base/model", "Raspberry Pi 4 Model B Rev 1.4\x00")
    write(sys_ / "bus/usb/devices/2-1/idVendor", "18d1\n")
    write(sys_ / "bus/usb/devices/2-1/idProduct", "9302\n")
    write(sys_ / "bus/usb/devices/1-1/idVendor", "046d\n")  # the webcam: not an Edge TPU
    write(sys_ / "bus/usb/devices/1-1/idProduct", "082d\n")
    write(tmp_path / "proc/cpuinfo", PI_CPUINFO)
    write(tmp_path / "proc/meminfo", "MemTotal:        3884376 kB\nMemAvailable:    3201212 kB\n")
    return tmp_path


def tree_args(root: Path) -> list[str]:
    return [
        "--sysfs-root",
        str(root / "sys"),
        "--dev-root",
        str(root / "dev"),
        "--proc-root",
        str(root / "proc"),
    ]


@pytest.fixture(autouse=True)
def no_installed_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Whatever /etc/edge-agent holds on this machine, the tests decide which broker is probed."""
    for module in (probe, probe_broker):
        monkeypatch.setattr(module, "DEFAULT_CONFIG", tmp_path / "absent" / "config.yaml")
    monkeypatch.setattr(probe_broker, "DEFAULT_UNIT", tmp_path / "absent" / "edge-agent.service")


def run_probe(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(probe.command, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def probe_json(*args: str) -> dict:
    code, out, err = run_probe("--json", *args)
    assert code == 0, out + err
    return json.loads(out)


# ---------------------------------------------------------------------------------------------- this machine


def test_reports_this_machines_runtime(empty_roots: list[str]) -> None:
    report = probe_json(*empty_roots)
    runtimes = {r["name"]: r for r in report["runtimes"]}
    assert runtimes["litert"]["version"] == importlib.metadata.version("ai-edge-litert")
    assert runtimes["litert"]["imports"] is True
    assert list(runtimes) == ["litert", "tflite-runtime", "tensorflow"]  # the order auto tries them
    assert runtimes["tensorflow"]["imports"] is None  # present here, but not imported unless asked
    system = report["system"]
    assert system["arch"] == os.uname().machine
    assert system["cores"] == os.cpu_count()
    assert system["memory_total_mb"] > 0 and system["python"] == ".".join(map(str, sys.version_info[:3]))


def test_never_imports_tensorflow_unless_asked(tmp_path: Path) -> None:
    code = (
        "import sys; from click.testing import CliRunner; from edge_agent.commands.probe import command;"
        f"args = ['--json', '--sysfs-root', {str(tmp_path)!r}, '--dev-root', {str(tmp_path)!r}];"
        "r = CliRunner().invoke(command, args);"
        "assert r.exit_code == 0, r.output; print('tensorflow' in sys.modules)"
    )  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_machine_without_cameras_or_sensors(empty_roots: list[str]) -> None:
    code, out, _ = run_probe(*empty_roots)
    assert code == 0
    assert "Cameras\n  no cameras found" in out
    assert "IIO sensors\n  no IIO devices found" in out
    assert "Serial ports\n  no serial ports found" in out
    assert "MQTT broker\n  not checked: give --config FILE or --host HOST" in out
    report = probe_json(*empty_roots)
    assert report["cameras"] == [] and report["iio"] == [] and report["serial"] == []
    assert report["edgetpu"]["usb"] == [] and report["broker"] is None


# ---------------------------------------------------------------------------------------------- a Pi tree


def test_lists_devices_of_a_sysfs_dev_tree(pi_tree: Path) -> None:
    report = probe_json(*tree_args(pi_tree))
    (adxl,) = report["iio"]
    assert adxl["device"] == "iio:device0" and adxl["name"] == "adxl345"
    assert [(c["name"], c["raw"], c["scale"]) for c in adxl["channels"]] == [
        ("accel_x", "12", "0.038300"),
        ("accel_y", "-7", "0.038300"),
        ("accel_z", "255", "0.038300"),
        ("temp", "310", "0.5"),
    ]
    assert adxl["sampling_frequency"] == "100.000000"

    cams = {c["device"]: c for c in report["cameras"]}
    assert list(cams) == [str(pi_tree / "dev/video0"), str(pi_tree / "dev/video1")]
    assert cams[str(pi_tree / "dev/video0")]["name"] == "HD Pro Webcam C920"
    assert cams[str(pi_tree / "dev/video0")]["opened"] is None  # a plain file: not handed to OpenCV
    assert cams[str(pi_tree / "dev/video0")]["by_id"] == "usb-046d_HD_Pro_Webcam_C920_9F5A3B2C-video-index0"
    assert cams[str(pi_tree / "dev/video0")]["by_path"] == f"{USB_PORT}-video-index0"
    null_cam = cams[str(pi_tree / "dev/video1")]
    assert null_cam["index"] == 1 and null_cam["opened"] is False and "cannot open" in null_cam["note"]

    serial = {p["device"]: p for p in report["serial"]}
    assert list(serial) == [str(pi_tree / f"dev/{n}") for n in ("ttyUSB0", "ttyAMA0", "serial0")]
    assert serial[str(pi_tree / "dev/ttyUSB0")]["by_id"] == "usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"
    assert serial[str(pi_tree / "dev/serial0")]["target"] == "ttyAMA0"

    system = report["system"]
    assert system["board"] == "Raspberry Pi 4 Model B Rev 1.4"
    assert system["cpu_model"] == "Cortex-A72"
    assert system["simd"] == []  # a Pi 4's A72 lacks the dot product that speeds up int8 on a Pi 5
    assert system["memory_total_mb"] == 3793 and system["memory_available_mb"] == 3126
    assert system["temperatures_c"] == {"thermal_zone0 (cpu-thermal)": 48.312}
    assert report["edgetpu"]["usb"] == ["2-1 18d1:9302 Coral USB Accelerator"]


def test_table_names_what_it_found(pi_tree: Path) -> None:
    code, out, _ = run_probe(*tree_args(pi_tree))
    assert code == 0
    for expected in (
        "Raspberry Pi 4 Model B Rev 1.4",
        "Cortex-A72",
        "adxl345",
        "accel_x=12, accel_y=-7",
        "HD Pro Webcam C920",
        "48.3 C",
        "none that speed up int8",
        "Coral USB Accelerator",
        "usb-FTDI_FT232R",
        "by-id/usb-046d_HD_Pro_Webcam_C920_9F5A3B2C-video-index0",
    ):
        assert expected in out, expected  # fmt: skip
    assert "no cameras found" not in out


def test_board_falls_back_to_cpuinfo_and_reads_jetson_release(pi_tree: Path, tmp_path: Path) -> None:
    (pi_tree / "sys/firmware/devicetree/base/model").unlink()
    roots = probe.Roots(
        sysfs=pi_tree / "sys", dev=pi_tree / "dev", proc=pi_tree / "proc", etc=tmp_path / "etc"
    )
    assert probe.probe_board(roots) == ("Raspberry Pi 4 Model B Rev 1.4", None)
    write(
        tmp_path / "etc/nv_tegra_release", "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic\n"
    )
    write(pi_tree / "sys/firmware/devicetree/base/model", "NVIDIA Jetson Orin Nano Developer Kit\x00")
    release = "R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic"
    assert probe.probe_board(roots) == ("NVIDIA Jetson Orin Nano Developer Kit", release)


def test_coral_before_firmware_load_and_pcie(pi_tree: Path) -> None:
    write(pi_tree / "sys/bus/usb/devices/2-1/idVendor", "1a6e\n")
    write(pi_tree / "sys/bus/usb/devices/2-1/idProduct", "089a\n")
    write(pi_tree / "dev/apex_0", "")
    tpu = probe_json(*tree_args(pi_tree))["edgetpu"]
    assert tpu["usb"] == ["2-1 1a6e:089a Coral USB Accelerator (firmware not loaded yet)"]
    assert tpu["pcie"] == [str(pi_tree / "dev/apex_0")]


def test_roots_from_the_environment(pi_tree: Path) -> None:
    env = {
        "EDGE_AGENT_SYSFS_ROOT": str(pi_tree / "sys"),
        "EDGE_AGENT_DEV_ROOT": str(pi_tree / "dev"),
        "EDGE_AGENT_PROC_ROOT": str(pi_tree / "proc"),
    }
    result = CliRunner().invoke(probe.command, ["--json", "--no-open"], env=env, catch_exceptions=False)
    report = json.loads(result.stdout)
    assert report["iio"][0]["name"] == "adxl345"
    assert all(c["opened"] is None for c in report["cameras"])  # --no-open leaves cameras alone


# ---------------------------------------------------------------------------------------------- broker


def broker_of(report: dict) -> dict:
    assert report["broker"] is not None
    return report["broker"]


def test_broker_reachable_anonymously(mosquitto, empty_roots: list[str]) -> None:
    broker = mosquitto()
    b = broker_of(probe_json(*empty_roots, "--host", broker.host, "--port", str(broker.port)))
    assert (b["reachable"], b["connected"], b["result"]) == (True, True, "connected anonymously")
    assert (b["host"], b["port"], b["source"]) == (broker.host, broker.port, "--host")


def test_broker_unreachable_port(empty_roots: list[str]) -> None:
    port = free_port()
    code, out, _ = run_probe(*empty_roots, "--host", "127.0.0.1", "--port", str(port), "--timeout", "1")
    assert code == 0
    assert f"127.0.0.1:{port} from --host" in out and "reachable  NO" in out
    assert "unreachable: Connection refused" in out


def test_broker_stopped_then_restarted(mosquitto, empty_roots: list[str]) -> None:
    broker = mosquitto()
    args = [*empty_roots, "--host", broker.host, "--port", str(broker.port), "--timeout", "1"]
    broker.stop()
    assert broker_of(probe_json(*args))["reachable"] is False
    broker.start()
    assert broker_of(probe_json(*args))["connected"] is True


def _config(tmp_path: Path, mqtt: dict) -> Path:
    cfg = {
        "mqtt": mqtt,
        "pipelines": [
            {
                "name": "door",
                "source": {"type": "camera", "url": "/dev/video0"},
                "model": {"path": "m.tflite"},
            }
        ],
    }
    return write(tmp_path / "config.yaml", json.dumps(cfg))  # JSON is YAML


def test_broker_login_from_the_config(mosquitto, empty_roots: list[str], tmp_path: Path) -> None:
    broker = mosquitto(users={"agent": "s3cret"})
    password = write(tmp_path / "password", "s3cret\n")
    mqtt = {"host": broker.host, "port": broker.port, "username": "agent", "password_file": str(password)}
    b = broker_of(probe_json(*empty_roots, "--config", str(_config(tmp_path, mqtt))))
    assert (b["connected"], b["result"], b["username"]) == (True, "connected as agent", "agent")

    password.write_text("wrong\n")
    b = broker_of(probe_json(*empty_roots, "--config", str(_config(tmp_path, mqtt))))
    assert b["reachable"] is True and b["connected"] is False
    assert b["result"] == "refused: Not authorized"

    anonymous = {"host": broker.host, "port": broker.port}
    b = broker_of(probe_json(*empty_roots, "--config", str(_config(tmp_path, anonymous))))
    assert b["connected"] is False and "the broker wants a login" in b["result"]


def test_broker_password_credential_read_like_the_service(
    mosquitto, empty_roots: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """password_credential outside systemd: the file named by the unit's LoadCredential= is used."""
    broker = mosquitto(users={"agent": "s3cret"})
    secret = write(tmp_path / "mqtt-password", "s3cret\n")
    unit = write(tmp_path / "edge-agent.service", f"[Service]\nLoadCredential=mqtt-password:{secret}\n")
    monkeypatch.setattr(probe_broker, "DEFAULT_UNIT", unit)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    mqtt = {
        "host": broker.host,
        "port": broker.port,
        "username": "agent",
        "password_credential": "mqtt-password",
    }
    config = _config(tmp_path, mqtt)
    assert broker_of(probe_json(*empty_roots, "--config", str(config)))["result"] == "connected as agent"

    monkeypatch.setattr(probe_broker, "DEFAULT_UNIT", tmp_path / "no-unit")
    b = broker_of(probe_json(*empty_roots, "--config", str(config)))
    assert b["reachable"] is True and b["connected"] is False
    assert b["result"].startswith("reachable; login not tried: credential 'mqtt-password' is not in")


def test_broker_over_tls(mosquitto, empty_roots: list[str], tmp_path: Path) -> None:
    broker = mosquitto(tls=True)
    mqtt = {"host": broker.host, "port": broker.port, "tls": {"ca_file": str(broker.tls.ca_cert)}}
    b = broker_of(probe_json(*empty_roots, "--config", str(_config(tmp_path, mqtt))))
    assert (b["tls"], b["connected"]) == (True, True)
    plain = {"host": broker.host, "port": broker.port}
    b = broker_of(probe_json(*empty_roots, "--config", str(_config(tmp_path, plain)), "--timeout", "1"))
    assert b["reachable"] is True and b["connected"] is False


def test_host_overrides_the_config(mosquitto, empty_roots: list[str], tmp_path: Path) -> None:
    broker = mosquitto()
    config = _config(tmp_path, {"host": "192.0.2.1", "port": 1})  # TEST-NET: never answers
    b = broker_of(
        probe_json(*empty_roots, "--config", str(config), "--host", broker.host, "--port", str(broker.port))
    )
    assert b["connected"] is True and b["source"] == str(config)


# ---------------------------------------------------------------------------------------------- errors


def test_bad_config_is_one_clear_error(tmp_path: Path) -> None:
    bad = write(tmp_path / "config.yaml", "mqtt: {hots: x}\npipelines: []\n")
    cmd = [
        sys.executable,
        "-m",
        "edge_agent.cli",
        "probe",
        "--config",
        str(bad),
        "--sysfs-root",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "mqtt.hots: unknown key; did you mean 'host'?" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_config_and_port_without_host(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "probe", "--config", str(tmp_path / "nope.yaml")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "config file not found" in proc.stderr
    code, _, err = run_probe("--port", "1883")
    assert code == 2 and "--port needs --host or --config" in err


def test_suggested_sources_are_valid_config(pi_tree: Path) -> None:
    """What probe suggests pastes into a config that the daemon's own loader accepts."""
    from edge_agent.config import parse_config

    report = probe_json(*tree_args(pi_tree))
    sources = report["sources"]
    assert sources == [
        # by the name that stays the camera's (video0 may be video2 after a re-plug); video1 is its
        # metadata node (index 1)
        {
            "type": "camera",
            "url": str(pi_tree / "dev/v4l/by-id/usb-046d_HD_Pro_Webcam_C920_9F5A3B2C-video-index0"),
        },
        {
            "type": "iio",
            "device": "adxl345",
            "channels": ["accel_x", "accel_y", "accel_z", "temp"],
            "sysfs_root": str(pi_tree / "sys/bus/iio/devices"),
        },
        {
            "type": "serial",
            "port": str(pi_tree / "dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"),
        },
        {"type": "serial", "port": str(pi_tree / "dev/serial0")},  # ttyAMA0 by its alias, once
    ]
    pipelines = [
        {"name": f"p{i}", "source": src, "model": {"path": "/m.tflite"}}
        | ({} if src["type"] == "camera" else {"window": {"size": 16, "hop": 8}})
        for i, src in enumerate(sources)
    ]
    cfg = parse_config({"pipelines": pipelines})
    assert [p.source.type for p in cfg.pipelines] == ["camera", "iio", "serial", "serial"]
    _, out, _ = run_probe(*tree_args(pi_tree))
    assert f'source: {{"type": "camera", "url": "{sources[0]["url"]}"}}' in out


def test_twin_cameras_are_suggested_by_their_usb_port_and_a_camera_without_links_by_its_node(
    empty_roots: list[str], tmp_path: Path
) -> None:
    """Two cameras of one model without serial numbers have one by-id name, which udev gives to one of them:
    by it, a config would follow whichever came last. Their USB ports tell them apart; a camera udev names
    neither way (a CSI bridge, a loopback) is suggested as its node."""
    dev, sys_ = tmp_path / "dev", tmp_path / "sys"
    for node, port in ((0, "usb-0:1.1:1.0"), (2, "usb-0:1.2:1.0"), (4, None)):
        write(sys_ / f"class/video4linux/video{node}/name", "USB2.0 Camera\n" if port else "loopback\n")
        write(sys_ / f"class/video4linux/video{node}/index", "0\n")
        write(dev / f"video{node}", "")
        if port:
            by_path = dev / f"v4l/by-path/platform-xhci-hcd.0-{port}-video-index0"
            by_path.parent.mkdir(parents=True, exist_ok=True)
            by_path.symlink_to(f"../../video{node}")
    (dev / "v4l/by-id").mkdir()
    (dev / "v4l/by-id/usb-Sonix_USB2.0_Camera-video-index0").symlink_to("../../video2")  # the last one wins
    report = probe_json(*empty_roots)
    assert [c["by_id"] for c in report["cameras"]] == [None, "usb-Sonix_USB2.0_Camera-video-index0", None]
    assert [s["url"] for s in report["sources"]] == [
        str(dev / "v4l/by-path/platform-xhci-hcd.0-usb-0:1.1:1.0-video-index0"),
        str(dev / "v4l/by-path/platform-xhci-hcd.0-usb-0:1.2:1.0-video-index0"),
        str(dev / "video4"),
    ]


def test_unopened_nodes_are_suggested_unless_they_are_a_pis_codecs(pi_tree: Path) -> None:
    """With --no-open (the installer's way) a node is suggested by its sysfs name and index alone: not the
    webcam's metadata node, and not the codec and ISP nodes every Pi has."""
    for node, name in ((10, "bcm2835-codec-decode"), (12, "bcm2835-isp"), (19, "rpi-hevc-dec")):
        write(pi_tree / f"sys/class/video4linux/video{node}/name", name + "\n")
        write(pi_tree / f"sys/class/video4linux/video{node}/index", "0\n")
        (pi_tree / f"dev/video{node}").symlink_to("/dev/null")  # character devices, as on a Pi
    report = probe_json(*tree_args(pi_tree), "--no-open")
    assert len(report["cameras"]) == 5
    cameras = [s["url"] for s in report["sources"] if s["type"] == "camera"]
    assert cameras == [str(pi_tree / "dev/v4l/by-id/usb-046d_HD_Pro_Webcam_C920_9F5A3B2C-video-index0")]


def test_nothing_to_suggest_on_a_bare_machine(empty_roots: list[str]) -> None:
    _, out, _ = run_probe(*empty_roots)
    assert "Config sources (pipelines[].source; add a window: for sensors)\n  nothing found to suggest" in out


def test_simd_features_names_those_that_pick_the_int8_kernels() -> None:
    """A Pi 5 (Cortex-A76: dot product, half precision) and an x86 host with AVX2 and AVX-512 VNNI, as
    their /proc/cpuinfo lists them; the probe and scripts/bench report these, in a fixed order."""
    from edge_agent.commands.probe_device import simd_features

    pi5 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
    pi5 += "asimdrdm lrcpc dcpop asimddp\nCPU part\t: 0xd0b\n"
    assert simd_features(pi5) == ["asimddp", "asimdhp"]
    x86 = "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni\n"
    assert simd_features(x86) == ["avx2", "avx512f", "avx512_vnni"]
    assert simd_features(PI_CPUINFO) == [] and simd_features("") == []
