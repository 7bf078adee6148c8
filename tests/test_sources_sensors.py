"""Sensor sources end to end: IIO against a sysfs-shaped folder, a real child process, real files, and a
pseudo-terminal standing in for a serial port (pyserial opens its slave side like any tty)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import SourceError
from edge_agent.sources.base import Frame, Source
from edge_agent.sources.command import CommandSourceConfig
from edge_agent.sources.factory import create_source
from edge_agent.sources.file_tail import FileSourceConfig
from edge_agent.sources.iio import IioSourceConfig
from edge_agent.sources.samples import QUEUE_WINDOWS
from edge_agent.sources.serial_lines import SerialSourceConfig
from edge_agent.sources.window import WindowConfig
from tests.fixtures.sources import read_frames
from tests.waiting import WAIT_S, wait_until


def read_to_end(source: Source) -> list[Frame]:
    frames = []
    deadline = time.monotonic() + WAIT_S
    while not source.finished:
        assert time.monotonic() < deadline, f"not finished within {WAIT_S} s; stats {source.stats}"
        frame = source.read(timeout=1.0)
        if frame is not None:
            frames.append(frame)
    assert source.read(timeout=0.05) is None
    return frames


# -- IIO ------------------------------------------------------------------------------------------


def make_iio_device(root: Path, dirname: str, name: str, attrs: dict[str, str]) -> Path:
    device = root / dirname
    device.mkdir(parents=True)
    (device / "name").write_text(name + "\n")
    for attr, value in attrs.items():
        (device / attr).write_text(value + "\n")
    return device


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "iio_devices"
    make_iio_device(root, "iio:device0", "bmp280", {"in_pressure_raw": "1000"})
    make_iio_device(
        root,
        "iio:device1",
        "adxl345",
        {
            "in_accel_x_raw": "100",
            "in_accel_y_raw": "-50",
            "in_accel_z_raw": "256",
            "in_accel_scale": "0.038300",  # shared by the accel channels
            "in_accel_z_scale": "0.5",  # channel-specific wins
            "in_temp_raw": "1000",
            "in_temp_offset": "-500",
            "in_temp_scale": "0.1",
        },
    )
    return root


def test_iio_scaled_values_in_windows(run_source, sysfs: Path) -> None:
    cfg = IioSourceConfig(
        device="adxl345",
        channels=["accel_x", "accel_y", "accel_z", "temp"],
        rate_hz=200,
        sysfs_root=str(sysfs),
    )
    source = run_source(cfg, WindowConfig(size=8, hop=4))
    frames = read_frames(source, 3)
    expected = [100 * 0.0383, -50 * 0.0383, 256 * 0.5, (1000 - 500) * 0.1]
    for frame in frames:
        assert frame.kind == "samples" and frame.data.shape == (8, 4) and frame.data.dtype == np.float32
        np.testing.assert_allclose(frame.data, np.tile(expected, (8, 1)), rtol=1e-6)
    assert [f.index for f in frames] == [0, 1, 2]
    assert source.stats["connected"] is True
    # the thread keeps sampling: a new raw value shows up in later windows
    (sysfs / "iio:device1" / "in_accel_x_raw").write_text("200\n")
    assert wait_until(lambda: np.isclose(read_frames(source, 1)[0].data[-1, 0], 200 * 0.0383))


def test_iio_device_by_directory_and_no_window(run_source, sysfs: Path) -> None:
    cfg = IioSourceConfig(
        device="iio:device0", channels=["in_pressure_raw"], rate_hz=100, sysfs_root=str(sysfs)
    )
    frame = read_frames(run_source(cfg), 1)[0]
    assert frame.data.shape == (1, 1) and frame.data[0, 0] == 1000.0  # no scale file: scale 1, offset 0


def test_iio_rate_is_roughly_kept(run_source, sysfs: Path) -> None:
    cfg = IioSourceConfig(device="adxl345", channels=["accel_x"], rate_hz=50, sysfs_root=str(sysfs))
    source = run_source(cfg)
    read_frames(source, 1)
    before, t0 = source.stats["samples"], time.monotonic()
    time.sleep(1.0)
    rate = (source.stats["samples"] - before) / (time.monotonic() - t0)
    assert 10 <= rate <= 70, rate


def test_iio_unknown_device_or_channel_is_a_source_error(sysfs: Path) -> None:
    cfg = IioSourceConfig(device="mpu6050", channels=["accel_x"], sysfs_root=str(sysfs))
    with pytest.raises(SourceError, match=r"mpu6050.*found: iio:device0 \(bmp280\), iio:device1 \(adxl345\)"):
        create_source(cfg).start(threading.Event())
    cfg = IioSourceConfig(device="adxl345", channels=["gyro_x"], sysfs_root=str(sysfs))
    with pytest.raises(SourceError, match=r"gyro_x.*available: accel_x, accel_y, accel_z, temp"):
        create_source(cfg).start(threading.Event())
    cfg = IioSourceConfig(device="adxl345", channels=["accel_x"], sysfs_root=str(sysfs / "nope"))
    with pytest.raises(SourceError, match="no IIO devices"):
        create_source(cfg).start(threading.Event())


def test_iio_device_that_goes_away_and_comes_back(run_source, sysfs: Path) -> None:
    cfg = IioSourceConfig(device="adxl345", channels=["accel_x"], rate_hz=100, sysfs_root=str(sysfs))
    source = run_source(cfg)
    read_frames(source, 1)
    device, parked = sysfs / "iio:device1", sysfs.parent / "parked"
    device.rename(parked)  # driver unbound
    assert wait_until(lambda: not source.stats["connected"]), source.stats
    assert "read failed" in source.stats["last_error"]
    parked.rename(sysfs / "iio:device7")  # bound again, under another number
    assert wait_until(lambda: source.stats["connected"]), source.stats
    assert source.stats["reconnects"] >= 1
    while source.read(timeout=0.01) is not None:  # drop what was queued before the outage
        pass
    assert read_frames(source, 2)[-1].data[0, 0] == pytest.approx(100 * 0.0383)


# -- command --------------------------------------------------------------------------------------


def python_command(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_command_csv_lines_to_windows_with_bad_lines_counted(run_source, caplog) -> None:
    code = (
        "import sys\n"
        "print('# header comment')\n"
        "for i in range(20):\n"
        "    print(f'{i},{i * 10}')\n"
        "    if i == 5: print('5,oops')\n"
        "    if i == 9: print('9')\n"
        "print('something went wrong', file=sys.stderr)\n"
    )
    caplog.set_level(logging.INFO, logger="edge_agent.sources")
    source = run_source(
        CommandSourceConfig(argv=python_command(code), restart=False), WindowConfig(size=5, hop=5)
    )
    frames = read_to_end(source)
    assert [f.data[:, 0].tolist() for f in frames] == [list(range(k, k + 5)) for k in (0, 5, 10, 15)]
    assert frames[1].data[:, 1].tolist() == [50, 60, 70, 80, 90]
    stats = source.stats
    assert stats["bad_lines"] == 2 and stats["samples"] == 20 and stats["frames"] == 4
    assert "exited with code 0" in stats["last_error"]
    assert any("stderr: something went wrong" in r.getMessage() for r in caplog.records)


def test_command_json_lines(run_source) -> None:
    code = "import json\nfor i in range(6): print(json.dumps({'t': i, 'ax': i / 2, 'label': 'x'}))"
    source = run_source(
        CommandSourceConfig(argv=python_command(code), format="json", fields=["ax"], restart=False)
    )
    assert [f.data.tolist() for f in read_to_end(source)] == [[[i / 2]] for i in range(6)]


def test_command_restarts_when_it_exits(run_source) -> None:
    source = run_source(CommandSourceConfig(argv=python_command("print('1,2'); print('3,4')")))
    assert wait_until(lambda: source.stats["reconnects"] >= 2 and source.stats["samples"] >= 6), source.stats
    assert not source.finished
    frames = read_frames(source, 3)
    assert all(f.data.tolist() in ([[1, 2]], [[3, 4]]) for f in frames)


def test_command_not_found_is_a_source_error() -> None:
    source = create_source(CommandSourceConfig(argv=["no-such-sensor-tool", "--json"]))
    with pytest.raises(SourceError, match="no-such-sensor-tool"):
        source.start(threading.Event())


def test_command_is_stopped_with_the_source(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    code = f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\nwhile True: time.sleep(1)"
    stop = threading.Event()
    source = create_source(CommandSourceConfig(argv=python_command(code)))
    source.start(stop)
    assert wait_until(lambda: pid_file.exists() and pid_file.read_text() != "")
    pid = int(pid_file.read_text())
    stop.set()
    source.close()
    assert wait_until(lambda: not Path(f"/proc/{pid}").exists() or "Z" in _proc_state(pid), timeout=10)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return "gone"


# -- file -----------------------------------------------------------------------------------------


def test_file_csv_with_header_and_fields(run_source, tmp_path: Path) -> None:
    path = tmp_path / "walk.csv"
    rows = "\n".join(f"{i * 0.01:.2f},{i},{-i},{i * 2}" for i in range(12))
    path.write_text("t,ax,ay,az\n" + rows + "\n0.12,1,2\n")  # last line short: bad
    source = run_source(FileSourceConfig(path=str(path), fields=["az", "ax"]), WindowConfig(size=4, hop=2))
    frames = read_to_end(source)
    assert len(frames) == 5  # (12 - 4) / 2 + 1
    assert frames[0].data.tolist() == [[0, 0], [2, 1], [4, 2], [6, 3]]
    assert frames[-1].data[:, 1].tolist() == [8, 9, 10, 11]
    assert source.stats["bad_lines"] == 1 and source.stats["skipped"] == 0


def test_file_is_lossless_for_a_slow_consumer(run_source, tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    count = QUEUE_WINDOWS * 3
    path.write_text("".join(f"{i}\n" for i in range(count)))
    source = run_source(FileSourceConfig(path=str(path)))
    frames = []
    while not source.finished:
        frame = source.read(timeout=WAIT_S)
        if frame is not None:
            frames.append(frame)
            if len(frames) < 5:
                time.sleep(0.1)  # the reader fills the queue meanwhile and must wait, not drop
    assert [f.data[0, 0] for f in frames] == list(range(count))
    assert source.stats["skipped"] == 0


def test_file_jsonl(run_source, tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_text('{"x": 1, "y": 2}\nnot json\n{"x": 3, "y": 4}\n{"x": 5, "y": 6}')  # no final newline
    source = run_source(FileSourceConfig(path=str(path), format="jsonl"), WindowConfig(size=2, hop=1))
    frames = read_to_end(source)
    assert [f.data.tolist() for f in frames] == [[[1, 2], [3, 4]], [[3, 4], [5, 6]]]
    assert source.stats["bad_lines"] == 1


def test_file_follow_reads_appended_lines(run_source, tmp_path: Path) -> None:
    path = tmp_path / "live.csv"
    path.write_text("a,b\n1,10\n")
    source = run_source(FileSourceConfig(path=str(path), follow=True), WindowConfig(size=2, hop=2))
    assert source.read(timeout=0.3) is None  # one sample so far: no window yet
    with path.open("a") as f:
        f.write("2,20\n3,")
        f.flush()
        assert read_frames(source, 1)[0].data.tolist() == [[1, 10], [2, 20]]
        f.write("30\n4,40\n")  # the partial line is completed
    assert read_frames(source, 1)[0].data.tolist() == [[3, 30], [4, 40]]
    assert not source.finished
    path.write_text("a,b\n7,70\n8,80\n")  # truncated and rewritten (same inode)
    assert read_frames(source, 1)[0].data.tolist() == [[7, 70], [8, 80]]


def test_file_follow_survives_rotation(run_source, tmp_path: Path) -> None:
    path = tmp_path / "rotating.csv"
    path.write_text("1\n2\n")
    source = run_source(FileSourceConfig(path=str(path), follow=True))
    assert [f.data[0, 0] for f in read_frames(source, 2)] == [1, 2]
    path.rename(tmp_path / "rotating.csv.1")
    path.write_text("3\n")
    assert read_frames(source, 1)[0].data[0, 0] == 3


def test_file_rate_hz_paces_the_replay(run_source, tmp_path: Path) -> None:
    path = tmp_path / "paced.csv"
    path.write_text("".join(f"{i}\n" for i in range(1000)))
    source = run_source(FileSourceConfig(path=str(path), rate_hz=20))
    read_frames(source, 1)
    time.sleep(1.0)
    assert 5 <= source.stats["samples"] <= 40, source.stats  # 1000 unpaced would be read at once
    assert not source.finished


def test_file_errors_at_start(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(SourceError, match=str(missing)):
        create_source(FileSourceConfig(path=str(missing))).start(threading.Event())
    bad_header = tmp_path / "h.csv"
    bad_header.write_text("t,x,y\n1,2,3\n")
    with pytest.raises(SourceError, match=r"fields.*no column z"):
        create_source(FileSourceConfig(path=str(bad_header), fields=["x", "z"])).start(threading.Event())


# -- serial ---------------------------------------------------------------------------------------


class FakeSerialDevice:
    """A pseudo-terminal: tests write to the master, pyserial reads the slave through a stable symlink
    (like /dev/serial/by-id/...), which can be pointed at a new pty after the old one vanished."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master = self.slave = -1
        self.plug()

    def plug(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.link.unlink(missing_ok=True)
        self.link.symlink_to(os.ttyname(self.slave))

    def write(self, text: str) -> None:
        os.write(self.master, text.encode())

    def unplug(self) -> None:
        for fd in (self.master, self.slave):
            if fd >= 0:
                os.close(fd)
        self.master = self.slave = -1


@pytest.fixture
def serial_device(tmp_path: Path) -> Iterator[FakeSerialDevice]:
    pytest.importorskip("serial")
    device = FakeSerialDevice(tmp_path / "ttyUSB-sensor")
    yield device
    device.unplug()


def test_serial_lines_and_replug(run_source, serial_device: FakeSerialDevice) -> None:
    cfg = SerialSourceConfig(port=str(serial_device.link), reconnect_min_s=0.1, reconnect_max_s=0.5)
    source = run_source(cfg, WindowConfig(size=2, hop=2))
    assert wait_until(lambda: source.stats["connected"]), source.stats
    serial_device.write("1,2\n3,4\nbad,line\n5,")
    serial_device.write("6\n7,8\n")
    frames = read_frames(source, 2)
    assert [f.data.tolist() for f in frames] == [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    assert source.stats["bad_lines"] == 1
    serial_device.unplug()
    assert wait_until(lambda: not source.stats["connected"]), source.stats
    assert source.stats["last_error"]
    serial_device.plug()
    assert wait_until(lambda: source.stats["connected"]), source.stats
    assert source.stats["reconnects"] >= 1
    serial_device.write("9,10\n11,12\n")
    assert read_frames(source, 1)[0].data.tolist() == [[9, 10], [11, 12]]


def test_serial_json(run_source, serial_device: FakeSerialDevice) -> None:
    cfg = SerialSourceConfig(port=str(serial_device.link), format="json", fields=["t", "h"])
    source = run_source(cfg)
    assert wait_until(lambda: source.stats["connected"]), source.stats
    serial_device.write('{"h": 40.5, "t": 21.25}\n')
    assert read_frames(source, 1)[0].data.tolist() == [[21.25, 40.5]]


def test_stdin_until_eof(tmp_path: Path) -> None:
    # '-' reads this process's stdin: run the source in a child whose stdin is a pipe we fill
    code = (
        "import threading\n"
        "from edge_agent.sources.factory import create_source\n"
        "from edge_agent.sources.file_tail import FileSourceConfig\n"
        "from edge_agent.sources.window import WindowConfig\n"
        "source = create_source(FileSourceConfig(path='-', format='jsonl'), WindowConfig(size=2, hop=2))\n"
        "source.start(threading.Event())\n"
        "while not source.finished:\n"
        "    frame = source.read(timeout=5)\n"
        "    if frame is not None: print(frame.data.tolist())\n"
        "print('bad', source.stats['bad_lines'])\n"
    )
    lines = "".join(f'{{"v": {i}}}\n' for i in range(4)) + "oops\n"
    result = subprocess.run(
        [sys.executable, "-c", code], input=lines, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.splitlines() == ["[[0.0], [1.0]]", "[[2.0], [3.0]]", "bad 1"]


def test_command_csv_header_without_the_fields_is_reported(run_source, caplog) -> None:
    code = "print('t,x,y')\nfor i in range(3): print(f'{i},{i},{i}')"
    cfg = CommandSourceConfig(argv=python_command(code), fields=["x", "z"], restart=False)
    source = run_source(cfg)
    assert read_to_end(source) == []
    assert source.stats["bad_lines"] == 4  # the header and every line after it
    assert any("no column z" in r.getMessage() for r in caplog.records)


def test_drop_oldest_keeps_the_newest_windows_for_a_slow_consumer_and_says_so(run_source, caplog) -> None:
    code = "for i in range(200): print(i)"
    cfg = CommandSourceConfig(argv=python_command(code), restart=False, overflow="drop_oldest")
    source = run_source(cfg)
    assert wait_until(lambda: source.stats["samples"] == 200), source.stats  # the model has not read yet
    frames = read_to_end(source)
    assert [f.data[0, 0] for f in frames] == list(range(200 - QUEUE_WINDOWS, 200))  # the newest survive
    assert source.stats["skipped"] == 200 - QUEUE_WINDOWS
    assert [f.index for f in frames] == list(range(200 - QUEUE_WINDOWS, 200))
    warnings = [r.getMessage() for r in caplog.records if "dropping the oldest windows" in r.getMessage()]
    assert len(warnings) == 1 and "overflow: block" in warnings[0]  # logged once, with what to do


def test_a_command_keeps_every_sample_for_a_slow_consumer_by_default(run_source) -> None:
    """A recorded stream piped through a command (cat of a CSV) loses nothing: the command waits."""
    code = "for i in range(200): print(i)"
    source = run_source(CommandSourceConfig(argv=python_command(code), restart=False))
    assert wait_until(lambda: source.stats["samples"] >= QUEUE_WINDOWS), source.stats
    time.sleep(0.3)  # a slow model: the command must wait, not run ahead and drop
    assert source.stats["samples"] <= QUEUE_WINDOWS + 1 and source.stats["skipped"] == 0
    frames = read_to_end(source)
    assert [f.data[0, 0] for f in frames] == list(range(200))
    assert source.stats["skipped"] == 0


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (CommandSourceConfig(argv=["true"]), "block"),
        (FileSourceConfig(path="x.csv"), "block"),
        (FileSourceConfig(path="x.csv", rate_hz=10), "block"),
        (IioSourceConfig(device="d", channels=["x"]), "drop_oldest"),
        (SerialSourceConfig(port="/dev/ttyUSB0"), "drop_oldest"),
    ],
)
def test_overflow_defaults_recorded_streams_block_live_sensors_drop(config, expected: str) -> None:
    assert config.overflow == expected
