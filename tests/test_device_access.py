"""A camera or serial port that is there but does not open says why and what to do: the group the user
lacks, a device policy, a node with no device behind it, a node that is no capture device.

The nodes live in a folder under /dev/shm (a camera url under /dev is a device; this machine has no camera).
Permission denied needs a process that file permissions apply to: those tests run one as root without
the capabilities that override them (setpriv), on nodes another user owns.
"""

from __future__ import annotations

import errno
import grp
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from edge_agent.sources.device_access import explain
from tests.waiting import wait_until

as_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="makes nodes of another owner and drops the capabilities that override permissions: needs root",
)


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Path]:
    """A folder under /dev/shm that every user may enter."""
    folder = Path("/dev/shm") / f"edge-agent-test-access-{tmp_path.name}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _node_of_group(path: Path, group: str) -> Path:
    """A node as udev makes a camera's or a serial port's: its group, mode 0660; owned by uid 1, not us."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        pytest.skip(f"this machine has no group {group}")
    path.write_text("")
    os.chown(path, 1, gid)
    path.chmod(0o660)
    return path


def _without_root_powers(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Python as root in no group but its own and without CAP_DAC_OVERRIDE: the permission bits apply."""
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--clear-groups"]
    return subprocess.run(
        [*drop, sys.executable, *(["-c", code] if code else []), *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


SOURCE_ERROR = """
import sys, threading, time
from edge_agent.sources import SourceConfig
from edge_agent.sources.factory import create_source
from pydantic import TypeAdapter
source = create_source(TypeAdapter(SourceConfig).validate_python({cfg!r}))
source.start(threading.Event())
deadline = time.monotonic() + 20
while source.stats["last_error"] is None and time.monotonic() < deadline:
    time.sleep(0.05)
print(source.stats["last_error"])
source.close()
"""


@as_root
@pytest.mark.parametrize(
    ("module", "node", "group", "source", "prefix"),
    [
        ("cv2", "video0", "video", {"type": "camera", "url": "NODE"}, ""),
        ("serial", "ttyUSB0", "dialout", {"type": "serial", "port": "NODE"}, "cannot open: "),
    ],
)
def test_a_device_this_user_may_not_open_names_the_group_to_join(
    dev: Path, module: str, node: str, group: str, source: dict, prefix: str
) -> None:
    pytest.importorskip(module)
    path = _node_of_group(dev / node, group)
    cfg = {key: str(path) if value == "NODE" else value for key, value in source.items()}
    out = _without_root_powers(SOURCE_ERROR.format(cfg=cfg))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        f"{prefix}{path}: permission denied: it belongs to group {group} and user root is not in it: "
        f"sudo usermod -aG {group} root, then log in again; the edge-agent service has that group already"
    )


@as_root
def test_check_notes_the_devices_this_user_may_not_open_without_opening_them(dev: Path) -> None:
    camera = _node_of_group(dev / "video0", "video")
    port = _node_of_group(dev / "ttyACM0", "dialout")
    (dev / "m.tflite").write_bytes(b"")
    config = dev / "config.yaml"
    model = {"path": str(dev / "m.tflite")}
    config.write_text(
        yaml.safe_dump(
            {
                "device_id": "access",
                "mqtt": {"host": "127.0.0.1", "port": 1},
                "state_dir": str(dev / "state"),
                "pipelines": [
                    {"name": "door", "source": {"type": "camera", "url": str(camera)}, "model": model},
                    {
                        "name": "meter",
                        "source": {"type": "serial", "port": str(port)},
                        "window": {"size": 4, "hop": 4},
                        "model": model,
                    },
                ],
            }
        )
    )
    config.chmod(0o644)
    out = _without_root_powers("", "-m", "edge_agent.cli", "check", "--no-models", str(config))
    assert out.returncode == 0, out.stdout + out.stderr  # notes: the service may open them (its groups)
    assert "2 note(s):" in out.stderr
    assert f"pipelines[0].source: {camera}: permission denied: it belongs to group video" in out.stderr
    assert f"pipelines[1].source: {port}: permission denied: it belongs to group dialout" in out.stderr
    # root with its powers may open both: no note
    root = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "check", "--no-models", str(config)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert root.returncode == 0 and "note" not in root.stderr, root.stderr


@as_root
def test_a_camera_node_with_no_device_behind_it_says_so(dev: Path) -> None:
    """A real character node of video4linux's major number, with no driver or camera behind it: what a
    stale /dev entry or a camera pulled while its node stays looks like (ENXIO)."""
    pytest.importorskip("cv2")
    from edge_agent.sources.camera import CameraSourceConfig
    from edge_agent.sources.factory import create_source

    node = dev / "video0"
    try:
        os.mknod(node, 0o660 | 0o020000, os.makedev(81, 250))  # S_IFCHR
        fd = os.open(node, os.O_RDWR | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno not in (errno.ENXIO, errno.ENODEV):
            pytest.skip(f"cannot make a char node here: {exc}")
    else:
        os.close(fd)
        pytest.skip("this machine has a video device 81:250")
    source = create_source(CameraSourceConfig(url=str(node)))
    source.start(threading.Event())
    try:
        assert wait_until(lambda: source.stats["last_error"] is not None, timeout=20), source.stats
        assert source.stats["last_error"] == (
            f"{node}: no device answers behind this node: it was unplugged or its driver is not loaded "
            "(edge-agent probe lists what is there)"
        )
    finally:
        source.close()


def test_a_node_that_opens_but_gives_no_video_names_a_busy_camera_or_a_metadata_node(dev: Path) -> None:
    pytest.importorskip("cv2")
    from edge_agent.sources.camera import CameraSourceConfig
    from edge_agent.sources.factory import create_source

    node = dev / "video1"
    node.write_text("")
    node.chmod(0o666)
    source = create_source(CameraSourceConfig(url=str(node)))
    source.start(threading.Event())
    try:
        assert wait_until(lambda: source.stats["last_error"] is not None, timeout=20), source.stats
        error = source.stats["last_error"]
        assert error.startswith(f"{node} opens but OpenCV gets no video from it: another program"), error
        assert "or it is not a capture node" in error
    finally:
        source.close()


@pytest.mark.parametrize(
    ("code", "fix"),
    [
        (errno.EPERM, "sudo systemctl restart edge-agent lets it in"),
        (errno.EBUSY, "another program is using it (fuser -v /dev/video0 names it)"),
        (errno.ENODEV, "it was unplugged or its driver is not loaded"),
        (errno.EIO, "Input/output error"),
    ],
)
def test_each_refusal_names_its_own_fix(code: int, fix: str) -> None:
    assert explain("/dev/video0", code).startswith("/dev/video0: ")
    assert fix in explain("/dev/video0", code)
