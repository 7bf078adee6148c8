"""Camera source against real video files and real ffmpeg streams on loopback, read through real OpenCV."""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import ConfigError, SourceError
from edge_agent.sources.camera import (
    CameraSource,
    CameraSourceConfig,
    _Attempt,
    camera_kind,
    jpeg_scale,
    shown_url,
)
from edge_agent.sources.factory import create_source
from edge_agent.sources.window import WindowConfig
from tests.fixtures.http import QuietHandler, serve_http
from tests.fixtures.sources import read_frames
from tests.fixtures.streams import decode_frame_number, encode_frame_number, render_test_video
from tests.fixtures.v4l2 import FakeV4l2
from tests.waiting import WAIT_S, wait_until

pytest.importorskip("cv2")

# Short timeouts so that stream failures are noticed within seconds; generous waits for a loaded machine.
FAST = {"open_timeout_s": 3.0, "read_timeout_s": 1.0, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}


@pytest.fixture
def open_source(run_source) -> Callable[..., CameraSource]:
    """Factory: a started CameraSource; stopped and closed at teardown."""

    def make(url: str | int, **fields: object) -> CameraSource:
        source = run_source(CameraSourceConfig(url=url, **fields))
        assert isinstance(source, CameraSource)
        return source

    return make


def read_numbers(source: CameraSource, count: int) -> list[int]:
    return [decode_frame_number(frame.data) for frame in read_frames(source, count)]


def test_kind_of_url() -> None:
    assert camera_kind(0) == camera_kind("1") == camera_kind("/dev/video0") == "device"
    assert camera_kind("rtsp://cam/stream") == camera_kind("udp://127.0.0.1:5000") == "stream"
    assert camera_kind("http://127.0.0.1:8080/") == "stream"
    assert camera_kind("recordings/door.mp4") == "file"


def test_a_file_url_is_a_video_file() -> None:
    """``file:///clips/door.mp4`` went to FFmpeg as a stream: at its end it was reconnected to forever, the
    replay never finished. It is the file's path; a file URL naming another host is refused."""
    assert CameraSourceConfig(url="file:///clips/door%20one.mp4").url == "/clips/door one.mp4"
    assert CameraSourceConfig(url="FILE://localhost/clips/door.mp4").url == "/clips/door.mp4"
    for url in ("file://nas/clips/door.mp4", "file://"):
        with pytest.raises(ValueError, match="a file URL names a local file"):
            CameraSourceConfig(url=url)


def test_a_password_in_the_url_is_never_logged(open_source, caplog) -> None:
    """IP cameras take their login in the URL (rtsp://admin:secret@...): the journal is readable by more
    people than the 0600 config, so logs show the password as ***, in the userinfo and in the query."""
    assert (
        shown_url("rtsp://admin:s3cret@192.168.1.20:554/stream1")
        == "rtsp://admin:***@192.168.1.20:554/stream1"
    )
    assert shown_url("rtsp://admin:p@ss@cam/live") == "rtsp://admin:***@cam/live"  # up to the last '@'
    assert (
        shown_url("http://cam/video.cgi?user=admin&PWD=s3cret&res=1")
        == "http://cam/video.cgi?user=admin&PWD=***&res=1"
    )
    assert shown_url("http://cam/live?token=abc#t") == "http://cam/live?token=***#t"
    for plain in (
        "rtsp://cam/a@b",
        "rtsp://admin@cam/x",
        "rtsp://cam:554/x",
        "clips/a:b@c.mp4",
        "/dev/video0",
        0,
    ):
        assert shown_url(plain) == str(plain)
    with caplog.at_level(logging.INFO, logger="edge_agent.sources.camera"):
        open_source("rtsp://admin:s3cret@127.0.0.1:1/stream?pwd=s3cret", **FAST)
        wait_until(lambda: "cannot open" in caplog.text)
    assert "rtsp://admin:***@127.0.0.1:1/stream?pwd=***: cannot open" in caplog.text
    assert "s3cret" not in caplog.text


@pytest.fixture
def mjpeg_login_server() -> Callable[[str], tuple[str, list[str]]]:
    """Factory: an HTTP MJPEG camera (multipart/x-mixed-replace, frame i shows i) that wants HTTP Basic
    ``login`` ("user:password"), as IP cameras do; returns its url and the logins it was offered."""
    import base64

    import cv2

    servers = []

    def make(login: str) -> tuple[str, list[str]]:
        offered: list[str] = []

        class Camera(QuietHandler):
            def do_GET(self) -> None:
                auth = self.headers.get("Authorization", "")
                given = base64.b64decode(auth[6:]).decode() if auth.startswith("Basic ") else None
                if given is not None:
                    offered.append(given)
                if given != login:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="camera"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    for number in range(1000):
                        jpeg = cv2.imencode(".jpg", encode_frame_number(number % 250))[1].tobytes()
                        head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                        self.wfile.write(head.encode() + jpeg + b"\r\n")
                        time.sleep(0.02)
                except OSError:
                    pass  # the reader went away

        base, server = serve_http(Camera)
        servers.append(server)
        return f"{base}/video.mjpg", offered

    yield make
    for server in servers:
        server.shutdown()


def test_a_streams_password_comes_from_a_file_not_the_config(
    open_source, mjpeg_login_server, tmp_path: Path, caplog
) -> None:
    """The config is world-readable (the service runs as a dynamic user), so a camera's login names its
    password as the MQTT login does (password_file, password_env or password_credential): put into the url's
    login when the camera is opened (percent-encoded, FFmpeg decodes it), never shown in the log."""
    password = "p@ss/w:rd%"  # every character a URL treats specially
    url, offered = mjpeg_login_server(f"admin:{password}")
    secret = tmp_path / "door-password"
    secret.write_text(password + "\n")
    with_user = url.replace("http://", "http://admin@")
    with caplog.at_level(logging.INFO, logger="edge_agent.sources.camera"):
        source = open_source(with_user, password_file=str(secret), **FAST)
        numbers = [decode_frame_number(frame.data) for frame in read_frames(source, 5)]
    assert numbers == sorted(numbers) and offered[-1] == f"admin:{password}"
    assert password not in caplog.text and "p%40ss" not in caplog.text
    secret.write_text("wrong\n")  # a wrong password: refused by the camera, retried, the log says so
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="edge_agent.sources.camera"):
        source = open_source(with_user, password_file=str(secret), **FAST)
        assert source.read(timeout=2.0) is None
    assert "admin:wrong" in offered and f"camera {with_user}: cannot open" in caplog.text
    secret.unlink()
    with pytest.raises(ConfigError, match=r"camera\.password_file: .* does not exist"):
        open_source(with_user, password_file=str(secret), **FAST)
    for url_, why in (
        (url, "put the user name in the url"),
        (url.replace("http://", "http://admin:x@"), "the url has a password already"),
        ("/dev/video0", "put the user name in the url"),
    ):
        with pytest.raises(ValueError, match=why):
            CameraSourceConfig(url=url_, password_env="DOOR_PASSWORD")


def test_file_delivers_every_frame_in_order_then_finishes(open_source, test_video: Path) -> None:
    source = open_source(str(test_video))
    frames = []
    while not source.finished:
        frame = source.read(timeout=WAIT_S)
        if frame is None:
            assert source.finished, f"no frame within {WAIT_S} s before the end; stats {source.stats}"
            break
        if len(frames) % 10 == 0:
            time.sleep(0.05)  # a slow consumer must not lose frames of a file replay
        frames.append(frame)
    assert [decode_frame_number(f.data) for f in frames] == list(range(50))
    assert [f.index for f in frames] == list(range(50))
    first = frames[0]
    assert first.kind == "image" and first.data.shape == (64, 64, 3) and first.data.dtype.name == "uint8"
    assert source.stats["frames"] == 50 and source.stats["skipped"] == 0
    assert source.read(timeout=0.1) is None


def test_file_loops(open_source, test_video: Path) -> None:
    source = open_source(str(test_video), loop=True)
    numbers = read_numbers(source, 120)
    assert numbers == list(range(50)) * 2 + list(range(20))
    assert not source.finished
    assert source.stats["reconnects"] == 0


def test_fps_cap_on_file(open_source, test_video: Path) -> None:
    source = open_source(str(test_video), loop=True, fps=10)
    read_numbers(source, 1)
    start_frames, t0 = source.stats["frames"], time.monotonic()
    time.sleep(2.0)
    rate = (source.stats["frames"] - start_frames) / (time.monotonic() - t0)
    # 10 fps asked; the file alone would go at hundreds per second
    assert 3 <= rate <= 13, rate


def test_missing_file_is_a_source_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "door.mp4"
    source = create_source(CameraSourceConfig(url=str(missing)))
    with pytest.raises(SourceError, match=str(missing)):
        source.start(threading.Event())
    source.close()


def test_undecodable_file_is_a_source_error(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.avi"
    bogus.write_text("this is not a video\n" * 100)
    source = create_source(CameraSourceConfig(url=str(bogus)))
    with pytest.raises(SourceError, match=r"cannot decode video file .*notes\.avi"):
        source.start(threading.Event())
    source.close()


def test_camera_takes_no_window(test_video: Path) -> None:
    with pytest.raises(ConfigError, match="window"):
        create_source(CameraSourceConfig(url=str(test_video)), WindowConfig(size=4, hop=2))


@pytest.mark.parametrize("protocol", ["udp", "http"])
def test_stream_is_read(open_source, ffmpeg_stream, protocol: str) -> None:
    stream = ffmpeg_stream(protocol)
    source = open_source(stream.url, **FAST)
    numbers = read_numbers(source, 10)
    assert all(0 <= n < 100 for n in numbers)
    steps = [(b - a) % 100 for a, b in itertools.pairwise(numbers)]
    assert all(s >= 1 for s in steps), numbers  # newer each time (the 100-frame video loops)
    assert source.stats["connected"] is True
    assert source.stats["frames"] >= 10


def test_slow_consumer_gets_newest_frames(open_source, ffmpeg_stream) -> None:
    stream = ffmpeg_stream("udp")
    source = open_source(stream.url, **FAST)
    read_numbers(source, 1)
    ages, numbers = [], []
    for _ in range(5):
        time.sleep(0.3)  # a slow model: ~7 frames arrive meanwhile at 25 fps
        frame = source.read(timeout=WAIT_S)
        assert frame is not None
        ages.append(time.monotonic() - frame.captured_mono)
        numbers.append(decode_frame_number(frame.data))
    assert source.stats["skipped"] > 0
    # newest-frame: what we get was captured just now, not 0.3 s ago in a queue
    assert min(ages) < 0.2, ages
    assert max((b - a) % 100 for a, b in itertools.pairwise(numbers)) > 1, numbers


def test_fps_cap_on_stream(open_source, ffmpeg_stream) -> None:
    stream = ffmpeg_stream("udp")
    source = open_source(stream.url, fps=5, **FAST)
    read_numbers(source, 1)
    start_frames, t0 = source.stats["frames"], time.monotonic()
    time.sleep(2.0)
    rate = (source.stats["frames"] - start_frames) / (time.monotonic() - t0)
    assert rate <= 7, rate  # the stream runs at 25 fps
    assert rate >= 1, rate


@pytest.mark.parametrize("protocol", ["udp", "http"])
def test_stream_dies_and_returns(open_source, ffmpeg_stream, protocol: str) -> None:
    stream = ffmpeg_stream(protocol)
    source = open_source(stream.url, **FAST)
    read_numbers(source, 3)
    stream.stop()
    assert wait_until(lambda: not source.stats["connected"]), source.stats
    assert source.stats["last_error"]
    stream.start()
    assert wait_until(lambda: source.stats["connected"]), source.stats
    frames_before = source.stats["frames"]
    read_numbers(source, 3)
    assert source.stats["frames"] > frames_before
    assert source.stats["reconnects"] >= 1


def test_stream_down_at_start_is_not_fatal(open_source, ffmpeg_stream) -> None:
    stream = ffmpeg_stream("http")
    stream.stop()
    source = open_source(stream.url, **FAST)  # no SourceError: a camera may come up after the daemon
    assert wait_until(lambda: source.stats["reconnects"] >= 1), source.stats
    assert source.stats["connected"] is False and source.stats["last_error"]
    assert source.read(timeout=0.2) is None
    stream.start()
    assert read_numbers(source, 2)
    assert source.stats["connected"] is True


def test_stream_that_hangs_is_dropped_and_reopened(open_source, ffmpeg_stream) -> None:
    stream = ffmpeg_stream("udp")
    source = open_source(stream.url, **FAST)
    read_numbers(source, 3)
    stream.pause()  # no packets, nothing closed: only a timeout can tell
    assert wait_until(lambda: not source.stats["connected"]), source.stats
    stream.resume()
    assert wait_until(lambda: source.stats["connected"]), source.stats
    frames_before = source.stats["frames"]
    read_numbers(source, 3)
    assert source.stats["frames"] > frames_before and source.stats["reconnects"] >= 1


def test_watchdog_abandons_an_attempt_without_progress(test_video: Path) -> None:
    # OpenCV's own timeouts are not honoured by every backend; the watchdog must not rely on them
    source = CameraSource(CameraSourceConfig(url=str(test_video), read_timeout_s=0.2, open_timeout_s=0.3))
    attempt = _Attempt()
    attempt.opened = True
    attempt.progress -= 5.0  # a read that has been blocked for 5 s
    started = time.monotonic()
    source._watch(attempt)
    assert time.monotonic() - started < 1.0
    assert attempt.abandoned.is_set() and attempt.outcome == "error"
    assert attempt.error is not None and "no frame" in attempt.error


def test_a_missing_device_is_waited_for_and_a_close_ends_the_wait() -> None:
    """A camera device that is not there does not stop the start (that ended the daemon and every other
    pipeline): the source waits for it, saying why in its stats; a close ends the wait at once."""
    device = "/dev/video97"
    if Path(device).exists():
        pytest.skip(f"{device} exists here")
    source = create_source(CameraSourceConfig(url=device))
    source.start(threading.Event())
    try:
        assert wait_until(lambda: source.stats["last_error"] is not None, timeout=5), source.stats
        assert f"device {device} is not there" in source.stats["last_error"]
        assert source.stats["connected"] is False and source.read(0.2) is None
    finally:
        t0 = time.monotonic()
        source.close()
        assert time.monotonic() - t0 < 1.0


def test_without_opencv_the_error_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['cv2'] = None  # as if opencv-python-headless were not installed\n"
        "from edge_agent.errors import DependencyError\n"
        "from edge_agent.sources.camera import CameraSourceConfig\n"
        "from edge_agent.sources.factory import create_source\n"
        "try:\n"
        "    create_source(CameraSourceConfig(url='/dev/video0'))\n"
        "except DependencyError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "pip install 'edge-agent[camera]'" in out.stdout


def test_sensor_sources_do_not_import_opencv(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("1\n")
    code = (
        "import sys, threading\n"
        "from edge_agent.sources import SourceConfig\n"
        "from edge_agent.sources.factory import create_source\n"
        "from edge_agent.sources.file_tail import FileSourceConfig\n"
        f"source = create_source(FileSourceConfig(path={str(data)!r}))\n"
        "source.start(threading.Event())\n"
        "print(source.read(timeout=10).data.tolist(), 'cv2' in sys.modules, 'serial' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["[[1.0]]", "False", "False"]


def test_rtsp_stream_is_read(open_source, ffmpeg_stream, monkeypatch) -> None:
    stream = ffmpeg_stream("rtsp")
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;udp")  # what this server speaks
    source = open_source(stream.url, **FAST)
    numbers = read_numbers(source, 10)
    # RTP over UDP: a lost packet or a missing keyframe gives a damaged picture (real RTSP does the same);
    # most frames must carry their number intact
    assert sum(0 <= n < 100 for n in numbers) >= 6, numbers
    assert source.stats["connected"] is True


def test_jpeg_scale_is_the_largest_that_still_covers_the_input() -> None:
    assert jpeg_scale(640, 480, (224, 224)) == 2  # 320x240
    assert jpeg_scale(1920, 1080, (224, 224)) == 4  # 480x270; 1/8 would be 240x135
    assert jpeg_scale(64, 64, (8, 8)) == 8
    assert jpeg_scale(640, 480, (320, 320)) == 1
    assert jpeg_scale(100, 100, (13, 13)) == 8  # libjpeg rounds up: ceil(100 / 8) = 13
    assert jpeg_scale(100, 100, (14, 14)) == 4


def _frames_until_end(source: CameraSource) -> list:
    frames = []
    while (frame := source.read(timeout=WAIT_S)) is not None:
        frames.append(frame)
    assert source.finished, source.stats
    return frames


@pytest.mark.parametrize(("decode_size", "scale"), [("auto", 4), ("full", 1)])
def test_mjpeg_file_is_decoded_reduced_for_a_small_model_input(
    open_source, tmp_path: Path, decode_size: str, scale: int
) -> None:
    """With decode_size auto, a 256x256 MJPEG video for a 64x64 model comes as 64x64 frames (libjpeg's
    1/4 DCT scaling), every frame still there and right, and close to what a full decode and an area
    resize give."""
    import cv2

    video = render_test_video(tmp_path / "big.avi", frames=30, size=256)
    source = open_source(str(video), decode_size=decode_size)
    source.set_preparer(lambda image: image.shape, min_size=(64, 64))
    frames = _frames_until_end(source)
    assert [decode_frame_number(f.data) for f in frames] == list(range(30))
    # prepared on the reader's thread (the first frames may have been read before the preparer was set)
    assert all(f.prepared == f.data.shape for f in frames[2:])
    size = 256 // scale
    assert {f.data.shape for f in frames[2:]} == {(size, size, 3)}
    assert source.stats["decode_scale"] == scale and source.stats["bad_frames"] == 0
    full = cv2.VideoCapture(str(video))
    for f in frames[2:]:
        ok, image = full.read()
        while ok and decode_frame_number(image) != f.index:
            ok, image = full.read()
        assert ok
        expected = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        assert np.abs(f.data.astype(int) - expected).mean() < 4.0


def test_frames_skipped_unseen_are_not_decoded_and_keep_their_index(open_source, tmp_path: Path) -> None:
    """A consumer whose steps skip every second frame unseen (a motion gate while all is still): those are
    never decoded nor offered, yet they take their frame index, so every frame offered carries the number of
    its place in the video (the motion benchmark maps results to video frames by it)."""
    video = render_test_video(tmp_path / "big.avi", frames=30, size=256)
    source = open_source(str(video), fps=20)  # paced: a live source (a replay is never skipped)
    source.set_preparer(lambda image: image.shape, (64, 64), _Gate(skip=lambda n: n % 2 == 1))
    frames = _frames_until_end(source)
    frames = [f for f in frames if f.prepared is not None]  # read before the preparer was set: not asked
    assert len(frames) >= 8, source.stats
    assert all(f.index == decode_frame_number(f.data) for f in frames)
    assert len({f.index % 2 for f in frames[1:]}) == 1  # one in two, the others never offered
    assert source.stats["frames"] == 30


class _Gate:
    """A FrameGate as a pipeline's motion gate is to its camera: ``skip(n)`` skips the n-th frame asked
    about unseen; with a ``glance_width``, ``keep(n)`` decides the n-th glance."""

    def __init__(self, skip=lambda n: False, glance_width=None, keep=lambda n: True) -> None:
        self._skip, self._width, self._keep = skip, glance_width, keep
        self.asked = itertools.count()
        self.glanced: list[tuple[int, ...]] = []

    def skip_unseen(self) -> bool:
        return self._skip(next(self.asked))

    def glance_width(self) -> int | None:
        return self._width

    def glance(self, small) -> bool:
        self.glanced.append(small.shape)
        return self._keep(len(self.glanced) - 1)


def test_frames_decided_at_a_glance_are_decoded_small_and_grey_and_only_kept_ones_in_full(
    open_source, tmp_path: Path
) -> None:
    """A gate that decides from a glance (a motion gate while all is still) gets a grey copy decoded at the
    smallest DCT scale at least as wide as it asked for; a frame it skips is never offered but takes its
    frame index; one it keeps is decoded in colour at the model's scale and offered as usual."""
    video = render_test_video(tmp_path / "big.avi", frames=30, size=256)
    gate = _Gate(glance_width=40, keep=lambda n: n % 3 == 0)
    source = open_source(str(video), fps=20)
    source.set_preparer(lambda image: image.shape, (64, 64), gate)
    frames = [f for f in _frames_until_end(source) if f.prepared is not None]
    assert len(gate.glanced) >= 20 and set(gate.glanced) == {(64, 64)}  # 256 / 4, grey; 1/8 is under 40
    # kept: one glance in 3, plus at most the frame read as the preparer was being set (not glanced at)
    assert 0 < len(frames) <= (len(gate.glanced) + 2) // 3 + 1, (len(frames), len(gate.glanced))
    # 1/4 size for min_size 64x64, in colour; the frame read as the preparer was being set may have been
    # decoded before the scale was known (full size), and only that first one
    assert all(f.data.shape == (64, 64, 3) for f in frames[1:]), [f.data.shape for f in frames]
    assert frames[0].data.shape in ((64, 64, 3), (256, 256, 3))
    assert all(f.index == decode_frame_number(f.data) for f in frames)
    assert source.stats["frames"] == 30


def test_mjpeg_replay_comes_reduced_from_its_first_frame(open_source, tmp_path: Path) -> None:
    """The consumer shows up after the source started (as in the daemon): a replay's first frames wait for
    it, so none is decoded full size (each would cost its full-size memory at the start)."""
    video = render_test_video(tmp_path / "big.avi", frames=10, size=256)
    source = open_source(str(video))
    time.sleep(0.3)  # the reader runs ahead of the consumer
    source.set_preparer(lambda image: image.shape, min_size=(64, 64))
    frames = _frames_until_end(source)
    assert [decode_frame_number(f.data) for f in frames] == list(range(10))
    assert [f.data.shape for f in frames] == [(64, 64, 3)] * 10
    assert all(f.prepared == (64, 64, 3) for f in frames)


def test_full_frames_when_the_consumer_needs_them(open_source, tmp_path: Path) -> None:
    """No min_size (evidence frames are saved) or no preparer at all: full-size frames."""
    video = render_test_video(tmp_path / "big.avi", frames=10, size=256)
    for min_size in (None, "no preparer"):
        source = open_source(str(video))
        if min_size is None:
            source.set_preparer(lambda image: None, min_size=None)
        frames = _frames_until_end(source)
        assert {f.data.shape for f in frames} == {(256, 256, 3)}
        assert source.stats["decode_scale"] == 1


@pytest.mark.parametrize(("protocol", "scale"), [("http", 4), ("udp", 1)])
def test_mjpeg_stream_is_decoded_reduced_other_codecs_are_not(
    open_source, ffmpeg_stream, protocol: str, scale: int
) -> None:
    """The http stream is MJPEG (multipart JPEGs): reduced. The udp one is MPEG-2: FFmpeg decodes it."""
    source = open_source(ffmpeg_stream(protocol).url, **FAST)
    source.set_preparer(lambda image: None, min_size=(16, 16))
    frames = read_frames(source, 15)
    assert {f.data.shape for f in frames[5:]} == {(64 // scale, 64 // scale, 3)}
    numbers = [decode_frame_number(f.data) for f in frames[5:]]
    assert all((b - a) % 100 >= 1 for a, b in itertools.pairwise(numbers)), numbers
    assert source.stats["decode_scale"] == scale


def test_mjpeg_libjpeg_cannot_read_falls_back_to_ffmpeg(open_source, tmp_path: Path, monkeypatch) -> None:
    """An MJPEG variant libjpeg rejects (every packet fails) must not starve the pipeline: after a few
    packets the source reopens and lets FFmpeg decode, full size, and says so."""
    import cv2

    monkeypatch.setattr(cv2, "imdecode", lambda *args: None)  # libjpeg "fails" on every packet
    video = render_test_video(tmp_path / "big.avi", frames=40, size=256)
    source = open_source(str(video), reconnect_min_s=0.1)
    source.set_preparer(lambda image: None, min_size=(64, 64))
    frames = _frames_until_end(source)
    assert {f.data.shape for f in frames} == {(256, 256, 3)}
    assert decode_frame_number(frames[-1].data) == 39  # read to the end after the fallback
    stats = source.stats
    assert stats["decode_scale"] == 1 and stats["bad_frames"] >= 10 and stats["reconnects"] == 1
    assert "did not decode with libjpeg" in stats["last_error"]


def test_a_preparer_that_raises_is_counted_and_logged(open_source, tmp_path: Path, caplog) -> None:
    """A failing preparer never fails silently: the frame is handed over unprepared (the consumer does the
    work itself), the failure counted in the stats and logged, rate-limited."""
    video = render_test_video(tmp_path / "v.avi", frames=10)
    source = open_source(str(video))

    def broken(image):
        raise MemoryError("no room for the input tensor")

    source.set_preparer(broken, min_size=None)
    with caplog.at_level(logging.WARNING, logger="edge_agent.sources.camera"):
        frames = _frames_until_end(source)
    assert [decode_frame_number(f.data) for f in frames] == list(range(10))
    assert all(f.prepared is None for f in frames)
    failed = source.stats["prepare_errors"]
    assert failed >= 8  # the first frames may have been read before the preparer was set
    warnings = [r for r in caplog.records if "preparing a frame failed" in r.getMessage()]
    assert 1 <= len(warnings) < failed and "no room for the input tensor" in warnings[0].getMessage()


# -- USB cameras (V4L2): a fake that hands out what OpenCV's V4L2 backend does, over a real MJPEG video ----


@pytest.fixture
def usb_camera(monkeypatch, tmp_path: Path) -> Callable[..., FakeV4l2]:
    """Factory: plug in a USB camera (index 0) offering ``formats``, showing numbered frames."""
    import cv2

    def plug(formats: tuple[str, ...] = ("MJPG",), size: int = 256, fps: float = 30.0) -> FakeV4l2:
        fake = FakeV4l2(render_test_video(tmp_path / "usb.avi", frames=30, size=size), formats, fps)
        monkeypatch.setattr(cv2, "VideoCapture", fake)
        monkeypatch.setattr(CameraSourceConfig, "missing_device", lambda cfg: None)  # its /dev node is there
        return fake

    return plug


def test_an_mjpeg_usb_camera_hands_its_jpeg_buffers_to_libjpeg_which_decodes_them_reduced(
    open_source, usb_camera
) -> None:
    """OpenCV's V4L2 backend would decode every MJPEG buffer in full; the camera asks it for the buffers
    as they are (CONVERT_RGB off) and decodes them at the model's scale, as for an MJPEG file or stream."""
    camera = usb_camera(("MJPG",))
    source = open_source(0, **FAST)
    source.set_preparer(lambda image: image.shape, min_size=(64, 64))
    frames = read_frames(source, 12)
    assert camera.opened[0].convert_rgb is False
    assert {f.data.shape for f in frames[3:]} == {(64, 64, 3)}  # 256 / 4, in colour
    numbers = [decode_frame_number(f.data) for f in frames[3:]]
    assert all((b - a) % 30 >= 1 for a, b in itertools.pairwise(numbers)), numbers
    assert source.stats["decode_scale"] == 4 and source.stats["bad_frames"] == 0


def test_a_usb_camera_asked_for_mjpg_switches_to_it_before_its_size_is_set(open_source, usb_camera) -> None:
    """A camera offering YUYV and MJPG: OpenCV picks YUYV (converted in full by the backend); with
    pixel_format MJPG the format is asked for first, then the size, and the frames come reduced."""
    import cv2

    plain = usb_camera(("YUYV", "MJPG"))
    source = open_source(0, width=256, height=256, **FAST)
    source.set_preparer(lambda image: image.shape, min_size=(64, 64))
    frames = read_frames(source, 6)
    assert plain.opened[0].palette == "YUYV" and plain.opened[0].convert_rgb is True
    assert {f.data.shape for f in frames} == {(256, 256, 3)} and source.stats["decode_scale"] == 1
    source.close()

    asked = usb_camera(("YUYV", "MJPG"))
    source = open_source(0, pixel_format="MJPG", width=256, height=256, **FAST)
    source.set_preparer(lambda image: image.shape, min_size=(64, 64))
    frames = read_frames(source, 12)
    camera = asked.opened[0]
    assert camera.palette == "MJPG" and camera.convert_rgb is False
    sets = [prop for op, prop, _ in camera.calls if op == "set"]
    assert sets.index(cv2.CAP_PROP_FOURCC) < sets.index(cv2.CAP_PROP_FRAME_WIDTH)
    assert {f.data.shape for f in frames[3:]} == {(64, 64, 3)} and source.stats["decode_scale"] == 4


def test_a_pixel_format_the_usb_camera_lacks_is_a_warning_naming_both(
    open_source, usb_camera, caplog
) -> None:
    usb_camera(("YUYV",))
    with caplog.at_level(logging.WARNING, logger="edge_agent.sources.camera"):
        source = open_source(0, pixel_format="MJPG", **FAST)
        frames = read_frames(source, 3)
    assert {f.data.shape for f in frames} == {(256, 256, 3)}  # it still works, as the camera delivers
    assert "the device refused pixel_format MJPG and delivers YUYV" in caplog.text, caplog.text


def test_usb_camera_frames_decided_at_a_glance_are_never_decoded_in_full(open_source, usb_camera) -> None:
    """A motion gate's glance at a USB camera's MJPEG buffer: a grey copy at the smallest DCT scale that is
    wide enough; only the frames it keeps are decoded in colour (at the model's scale)."""
    usb_camera(("MJPG",), fps=40.0)
    gate = _Gate(glance_width=40, keep=lambda n: n % 3 == 0)
    source = open_source(0, **FAST)
    source.set_preparer(lambda image: image.shape, (64, 64), gate)
    frames, deadline = [], time.monotonic() + WAIT_S
    while len(gate.glanced) < 18 and time.monotonic() < deadline:
        frame = source.read(timeout=0.1)
        if frame is not None and frame.prepared is not None:  # not one read as the preparer was being set
            frames.append(frame)
    assert len(gate.glanced) >= 18, source.stats
    assert set(gate.glanced) == {(64, 64)}  # 256 / 4, grey
    assert 0 < len(frames) <= len(gate.glanced) // 3 + 2, (len(frames), len(gate.glanced))
    assert all(f.data.shape == (64, 64, 3) for f in frames[1:]), [f.data.shape for f in frames]


def test_a_decoded_frame_decided_at_a_glance_is_never_prepared_nor_offered(open_source, usb_camera) -> None:
    """A YUYV camera (decoded by the capture, as H.264 is by FFmpeg): a motion gate's glance is the frame
    shrunk to its width, in grey; a frame it skips is neither prepared for the model nor offered, one it keeps
    is, as usual."""
    usb_camera(("YUYV",), fps=40.0)
    gate = _Gate(glance_width=40, keep=lambda n: n % 3 == 0)
    prepared: list[tuple[int, ...]] = []
    source = open_source(0, **FAST)
    source.set_preparer(lambda image: prepared.append(image.shape) or image.shape, None, gate)
    frames, deadline = [], time.monotonic() + WAIT_S
    while len(gate.glanced) < 18 and time.monotonic() < deadline:
        frame = source.read(timeout=0.1)
        if frame is not None and frame.prepared is not None:
            frames.append(frame)
    assert len(gate.glanced) >= 18, source.stats
    assert set(gate.glanced) == {(40, 40)}  # 256x256 shrunk to 40 wide, grey
    assert frames and len(prepared) <= len(gate.glanced) // 3 + 2, (len(prepared), len(gate.glanced))
    assert {f.data.shape for f in frames} == {(256, 256, 3)}


def test_frames_over_the_fps_cap_or_skipped_unseen_are_never_converted(open_source, usb_camera) -> None:
    """A YUYV camera, whose buffers OpenCV's V4L2 backend converts to BGR when they are retrieved: the frames
    over the fps cap and those a motion gate skips unseen are grabbed and handed back unconverted (as FFmpeg
    then skips a stream's colour conversion); only the rest are retrieved, and they are offered as usual."""
    fake = usb_camera(("YUYV",), fps=40.0)
    gate = _Gate(skip=lambda n: n % 2 == 1)
    source = open_source(0, fps=20, **FAST)
    source.set_preparer(lambda image: image.shape, None, gate)
    frames = [f for f in read_frames(source, 10) if f.prepared is not None]
    camera = fake.opened[0]
    grabbed, retrieved = camera.index, camera.retrieved
    assert grabbed >= 20 and 0 < retrieved <= 0.6 * grabbed, (grabbed, retrieved)  # ~1/4: half by each
    assert frames and {f.data.shape for f in frames} == {(256, 256, 3)}
    assert source.stats["frames"] >= len(gate.glanced) + len(frames)


def test_pixel_format_is_for_devices_only() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="pixel_format applies to camera devices"):
        CameraSourceConfig(url="door.avi", pixel_format="MJPG")
    with pytest.raises(ValidationError, match="a FourCC is 4 characters, such as MJPG or YUYV"):
        CameraSourceConfig(url="/dev/video0", pixel_format="MJPEG")
    assert CameraSourceConfig(url=0, pixel_format="MJPG").pixel_format == "MJPG"
