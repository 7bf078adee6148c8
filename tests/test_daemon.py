"""``edge-agent run`` end to end: the int8 digits model made by edge-convert, a video file and ffmpeg streams,
real mosquitto, a separate subscriber on ``#``. Every message passes the privacy check (tests/privacy.py):
allowed topics, strict schemas, no frame bytes in any encoding."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.daemon_harness import Agents, NotifySocket, results, stats, write_config
from tests.fixtures.broker import validate_payload
from tests.privacy import ImageCanary, canary_frame, decoded_frames

ACCURACY_FLOOR = 0.90  # the int8 digits CNN scores ~0.95 on held-out digits; video JPEG rounding costs little
RESULT_KEYS = {"schema", "device", "pipeline", "seq", "boot", "ts", "model", "latency_ms", "frame"} | {
    "label", "class_id", "score", "top_k"
}  # fmt: skip


def offline(messages) -> bool:
    return any(t.endswith("/status") and p == b"offline" for t, p, _ in messages)


def test_video_file_results_accuracy_and_no_raw_data(
    tmp_path: Path, mosquitto, privacy, digits_int8, digits_video
) -> None:
    broker = mosquitto()
    pipeline = {"name": "digits", "source": {"type": "camera", "url": str(digits_video.path)},
                "model": {"path": str(digits_int8)}, "publish": {"qos": 1}}  # fmt: skip
    config = write_config(tmp_path / "config.yaml", broker, [pipeline])
    everything = privacy(broker, config, canary=ImageCanary(decoded_frames(digits_video.path)))
    with Agents(tmp_path) as agents:
        agent = agents.start(config)
        assert agent.wait(120) == 0, agent.log()  # a finite video: run ends by itself, outbox drained
    messages = everything.sub.wait_for(offline, timeout=10)
    n = len(digits_video.labels)

    got = results(messages)
    assert sorted(r["seq"] for r in got) == list(range(1, n + 1))
    assert {r["boot"] for r in got} == {1}  # the first start of a new state directory
    assert sorted(r["frame"] for r in got) == list(range(n))
    correct = 0
    for r in got:
        validate_payload(r, "result")
        assert set(r) <= RESULT_KEYS, set(r) - RESULT_KEYS
        lat = r["latency_ms"]
        assert set(lat) == {"capture_age", "preprocess", "invoke", "postprocess", "total"}
        assert lat["total"] >= lat["invoke"] + lat["preprocess"] + lat["postprocess"] - 0.01
        correct += r["label"] == digits_video.labels[r["frame"]]
    assert correct / n >= ACCURACY_FLOOR, f"accuracy {correct}/{n}"

    final = stats(messages)[-1]
    validate_payload(final, "stats")
    assert final["pipelines"]["digits"]["frames"] == n and final["pipelines"]["digits"]["published"] == n
    assert final["outbox"]["depth"] == 0

    # a subscriber on '#' sees only our three kinds of topic, strict payloads, no frame in any encoding
    everything.check()


@pytest.mark.parametrize("protocol", ["udp", "http"])
def test_stream_dies_and_returns(
    tmp_path: Path, mosquitto, subscriber, privacy, digits_int8, digits_video, ffmpeg_stream, protocol: str
) -> None:
    stream = ffmpeg_stream(protocol, digits_video.path)
    broker = mosquitto()
    sub = subscriber(broker, "edge/#")
    source = {"type": "camera", "url": stream.url, "read_timeout_s": 1.0, "open_timeout_s": 5.0,
              "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}  # fmt: skip
    pipeline = {"name": "stream", "source": source, "model": {"path": str(digits_int8)}}
    config = write_config(tmp_path / "config.yaml", broker, [pipeline])
    watch = privacy(broker, config)  # the stream re-encodes frames: topics, schemas and media markers only
    notify = NotifySocket(tmp_path / "notify.sock")
    with Agents(tmp_path) as agents:
        agent = agents.start(config, {"NOTIFY_SOCKET": str(notify.path)})
        agent.expect(sub, lambda m: len(results(m)) >= 10, timeout=40)
        stream.stop()  # the camera goes away: the daemon notices (no frame within read_timeout_s)
        seen = len(sub.snapshot())
        agent.expect(
            sub, lambda m: any(not s["pipelines"]["stream"]["source"]["connected"] for s in stats(m[seen:]))
        )
        assert agent.proc.poll() is None, agent.log()
        before = len(results(sub.snapshot()))
        stream.start()  # and comes back: the daemon reconnects and goes on
        agent.expect(sub, lambda m: len(results(m)) >= before + 10, timeout=40)
        agent.expect(
            sub, lambda m: any(s["pipelines"]["stream"]["source"]["reconnects"] >= 1 for s in stats(m))
        )
        # systemd's STATUS= said why while the stream was down, and says nothing of it once it is back
        notify.poll(2.5)
        status = [line for _, line in notify.received if line.startswith("STATUS=")]
        down = re.compile(r"stream running \d+ frames \(")
        assert any(down.search(line) for line in status), status
        assert "stream running" in status[-1] and not down.search(status[-1]), status
        assert agent.stop() == 0, agent.log()
    notify.close()
    got = results(sub.snapshot())
    seqs = [r["seq"] for r in got]
    assert seqs == list(range(1, len(seqs) + 1))
    labels = set(digits_video.labels)
    for r in got:
        validate_payload(r, "result")
        assert r["label"] in labels
    for s in stats(sub.snapshot()):
        validate_payload(s, "stats")
    watch.check()


def test_evidence_frames_stay_local_and_bounded(
    tmp_path: Path, mosquitto, privacy, color_int8, canary_video
) -> None:
    broker = mosquitto()
    pipeline = {"name": "cam", "source": {"type": "camera", "url": str(canary_video)},
                "model": {"path": str(color_int8.path)},
                "evidence": {"enabled": True, "max_files": 5, "max_bytes": 10**15}}  # fmt: skip
    config = write_config(tmp_path / "config.yaml", broker, [pipeline])
    removed = tmp_path / "state" / "evidence" / "door"  # a pipeline since removed from the config left this
    removed.mkdir(parents=True)
    (removed / "000000000007-person.jpg").write_bytes(b"\xff\xd8" + bytes(2000))
    everything = privacy(broker, config, canary=ImageCanary([canary_frame()]))
    with Agents(tmp_path) as agents:
        agent = agents.start(config)
        assert agent.wait(60) == 0, agent.log()
    # a byte bound no card holds: said once at the start (the count bound keeps this folder small anyway)
    room = [line for line in agent.log().splitlines() if "its file system has room for" in line]
    assert len(room) == 1
    assert "cam's evidence up to 1,000,000,000 MB (pipelines[0].evidence.max_bytes)" in room[0]
    # frames no pipeline keeps now: named once at the start, left where they are
    unkept = [line for line in agent.log().splitlines() if f"evidence folder {removed}: 1 frame(s)" in line]
    assert len(unkept) == 1 and (removed / "000000000007-person.jpg").exists()
    messages = everything.sub.wait_for(offline, timeout=10)
    got = results(messages)
    assert len(got) == 50  # canary_video has 50 frames
    files = sorted((tmp_path / "state" / "evidence" / "cam").glob("*.jpg"))
    assert len(files) == 5  # the newest five of 50 saved frames
    final = stats(messages)[-1]["pipelines"]["cam"]["evidence"]  # the stats topic says what the folder holds
    assert final == {"files": 5, "bytes": sum(f.stat().st_size for f in files), "saved": 50, "failed": 0,
                     "last_error": None}  # fmt: skip
    newest = sorted(r["seq"] for r in got)[-5:]
    assert [int(f.name.split("-")[0]) for f in files] == newest
    assert all(f.read_bytes()[:2] == b"\xff\xd8" for f in files)
    everything.check()  # the JPEGs were never published, nor the frames they show


def test_evidence_goes_at_its_age_while_nothing_new_is_saved(
    tmp_path: Path, mosquitto, subscriber, color_int8, canary_video
) -> None:
    """One published result (the same frame over and over, on_change) keeps one frame; the daemon deletes it
    at max_age_s with no later frame to prune on, and goes on running."""
    broker = mosquitto()
    sub = subscriber(broker, "edge/#")
    camera = {"type": "camera", "url": str(canary_video), "loop": True, "fps": 25}
    pipeline = {"name": "cam", "source": camera, "model": {"path": str(color_int8.path)},
                "publish": {"policy": "on_change"},
                "evidence": {"enabled": True, "max_age_s": 2}}  # fmt: skip
    config = write_config(tmp_path / "config.yaml", broker, [pipeline], mqtt={"stats_interval_s": 0.5})
    folder = tmp_path / "state" / "evidence" / "cam"

    def files(m) -> list[int]:  # the folder's file count in each stats message
        return [s["pipelines"]["cam"]["evidence"]["files"] for s in stats(m)]

    with Agents(tmp_path) as agents:
        agent = agents.start(config)
        seen = len(agent.expect(sub, lambda m: 1 in files(m)))
        messages = agent.expect(sub, lambda m: 0 in files(m[seen:]), timeout=15)
        running = agent.proc.poll() is None
        assert agent.stop() == 0, agent.log()
    assert running, agent.log()
    last = stats(messages)[-1]["pipelines"]["cam"]
    assert last["frames"] > 50 and len(results(messages)) == 1  # frames went on; one result was published
    assert last["evidence"] == {"files": 0, "bytes": 0, "saved": 1, "failed": 0, "last_error": None}
    assert list(folder.glob("*")) == []


def test_evidence_that_cannot_be_kept_stops_no_result_and_is_said(
    tmp_path: Path, mosquitto, subscriber, privacy, color_int8, canary_video
) -> None:
    """A file where the evidence folder goes (a parent this user cannot write does the same): every result
    is published, the log says why once, the stats count the frames not kept, systemd's STATUS= says so."""
    broker = mosquitto()
    sub = subscriber(broker, "edge/#")
    blocked = tmp_path / "state" / "evidence" / "cam"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("in the way")
    camera = {"type": "camera", "url": str(canary_video), "loop": True, "fps": 25}
    pipeline = {"name": "cam", "source": camera, "model": {"path": str(color_int8.path)},
                "evidence": {"enabled": True}}  # fmt: skip
    config = write_config(tmp_path / "config.yaml", broker, [pipeline])
    watch = privacy(broker, config, canary=ImageCanary([canary_frame()]))
    notify = NotifySocket(tmp_path / "notify.sock")
    with Agents(tmp_path) as agents:
        agent = agents.start(config, {"NOTIFY_SOCKET": str(notify.path)})
        messages = agent.expect(
            sub,
            lambda m: any(s["pipelines"]["cam"].get("evidence", {}).get("failed", 0) >= 20 for s in stats(m)),
        )
        notify.poll(2.5)
        assert agent.stop() == 0, agent.log()
    notify.close()
    pipelines = [s["pipelines"] for s in stats(messages)]
    cam = next(p["cam"] for p in pipelines if p["cam"]["evidence"]["failed"] >= 20)
    evidence = cam["evidence"]
    assert (evidence["files"], evidence["saved"]) == (0, 0)
    assert evidence["last_error"].startswith(f"cannot create the folder {blocked} (File exists)")
    # every result went out, and its frame was tried and counted (the count comes first: at most 1 ahead)
    assert cam["published"] == cam["results"] and len(results(messages)) >= 20
    assert evidence["failed"] - cam["published"] in (0, 1)
    assert agent.log().count("cannot create the folder") == 1, agent.log()
    status = [line for _, line in notify.received if line.startswith("STATUS=")]
    assert any(
        re.search(r"cam running \d+ frames \(evidence: \d+ frame\(s\) not kept\)", s) for s in status
    ), status
    assert blocked.read_text() == "in the way"
    watch.check()
