"""The daemon (a real ``edge-agent run`` subprocess) under the failures it is built for: the broker gone for
10 s, the daemon SIGKILLed and restarted, a wrong broker password, a corrupt model on SIGHUP. Results go
through the durable outbox (QoS 1) to real mosquitto and a separate subscriber; the privacy watch checks
every message on '#' (the camera shows the canary frame)."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import sqlite3
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests.daemon_harness import Agents, NotifySocket, results, stats, write_config
from tests.fixtures.broker import validate_payload
from tests.privacy import ImageCanary, canary_frame
from tests.storage import fill, small_tmpfs

FPS = 15


def camera_pipeline(model: Path, video: Path, **extra) -> dict:
    return {"name": "cam", "source": {"type": "camera", "url": str(video), "loop": True, "fps": FPS},
            "model": {"path": str(model)}, "publish": {"qos": 1}, **extra}  # fmt: skip


def outbox_seqs(state_dir: Path) -> set[int]:
    """Seqs of the results still in the outbox (read-only, as the daemon left it)."""
    db = state_dir / "outbox.sqlite3"
    if not db.exists():  # the daemon has not created it yet
        return set()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        try:
            rows = conn.execute("SELECT payload FROM outbox ORDER BY id").fetchall()
        except sqlite3.OperationalError:  # the file exists, its tables not yet: the daemon is just starting
            return set()
    finally:
        conn.close()
    return {json.loads(bytes(p))["seq"] for (p,) in rows}


def seq_copies(messages) -> dict[int, set[bytes]]:
    copies: dict[int, set[bytes]] = defaultdict(set)
    for topic, payload, _ in messages:
        if topic.endswith("/result"):
            copies[json.loads(payload)["seq"]].add(payload)
    return copies


def test_broker_down_10s_every_seq_arrives(
    tmp_path: Path, mosquitto, subscriber, privacy, color_int8, canary_video
) -> None:
    broker = mosquitto(persistent=True)
    sub = subscriber(broker, "edge/testdev/#", client_id="outage-sub", clean_session=False)
    config = write_config(tmp_path / "config.yaml", broker, [camera_pipeline(color_int8.path, canary_video)])
    watch = privacy(broker, config, canary=ImageCanary([canary_frame()]))
    with Agents(tmp_path) as agents:
        agent = agents.start(config)
        before = len(sub.wait_for(lambda m: len(results(m)) >= FPS, timeout=30))
        broker.stop()  # kill -9: an outage, not a clean shutdown
        time.sleep(10)  # the outage itself (the scenario), not an assertion
        assert agent.proc.poll() is None, agent.log()
        depth = len(outbox_seqs(tmp_path / "state"))
        assert depth >= FPS * 5, f"only {depth} results queued during a 10 s outage at {FPS} fps"
        broker.start()
        sub.wait_for(lambda m: len(results(m)) >= before + depth + FPS, timeout=60)
        assert agent.stop() == 0, agent.log()
    final = stats(sub.wait_for(lambda m: any(p == b"offline" for _, p, _ in m), timeout=10))[-1]
    published = final["pipelines"]["cam"]["published"]
    copies = seq_copies(sub.snapshot())
    missing = set(range(1, published + 1)) - copies.keys()
    assert not missing, (
        f"{len(missing)} of {published} seqs never arrived: {sorted(missing)[:20]}; {before} came before the "
        f"outage, {depth} were queued; broker log:\n{broker.log_tail(60)}\nagent log (end):\n"
        + "\n".join(agent.log().splitlines()[-40:])
    )
    assert max(copies) == published
    assert all(len(c) == 1 for c in copies.values()), "a duplicate differs from the original"
    assert final["outbox"]["depth"] == 0 or outbox_seqs(tmp_path / "state") == set()
    assert final["mqtt"]["reconnects"] >= 1
    for obj in results(sub.snapshot())[:50]:
        validate_payload(obj, "result")
    watch.check()


def test_sigkill_and_restart_lose_nothing(
    tmp_path: Path, mosquitto, subscriber, privacy, color_int8, canary_video
) -> None:
    broker = mosquitto(persistent=True)
    sub = subscriber(broker, "edge/testdev/#", client_id="crash-sub", clean_session=False)
    state = tmp_path / "state"
    config = write_config(tmp_path / "config.yaml", broker, [camera_pipeline(color_int8.path, canary_video)])
    watch = privacy(broker, config, canary=ImageCanary([canary_frame()]))
    with Agents(tmp_path) as agents:
        # run 1: connected, then SIGKILL -> the broker publishes the Last Will
        run1 = agents.start(config)
        sub.wait_for(lambda m: len(results(m)) >= 20, timeout=30)
        run1.kill()
        sub.wait_for(lambda m: any(t.endswith("/status") and p == b"offline" for t, p, _ in m), timeout=15)
        pending1 = outbox_seqs(state)
        received1 = set(seq_copies(sub.snapshot()))

        # run 2: broker down, results pile up in the outbox, SIGKILL again
        broker.stop()
        run2 = agents.start(config)
        deadline = time.monotonic() + 30
        while len(outbox_seqs(state) - pending1) < 20:
            assert time.monotonic() < deadline, run2.log()
            assert run2.proc.poll() is None, run2.log()
            time.sleep(0.1)
        run2.kill()
        pending2 = outbox_seqs(state)
        assert pending2 >= pending1 and len(pending2) >= 20

        # run 3: broker back; everything appended before either crash must arrive
        broker.start()
        run3 = agents.start(config)
        sub.wait_for(lambda m: pending2 <= set(seq_copies(m)), timeout=60)
        assert run3.stop() == 0, run3.log()

    copies = seq_copies(sub.snapshot())
    run1_seqs = received1 | pending1
    assert set(range(1, max(run1_seqs) + 1)) <= copies.keys(), "a result of run 1 was lost"
    assert pending2 <= copies.keys()
    assert min(pending2 - pending1) > max(run1_seqs)  # seqs only grow across restarts (no reuse)
    assert all(len(c) == 1 for c in copies.values())
    assert outbox_seqs(state) == set()
    # each start has its boot number: within one boot seq has no gap (a gap there would be a loss); the jump
    # between boots is the reserved block the crash left unused
    by_boot: dict[int, list[int]] = defaultdict(list)
    for seq, payloads in copies.items():
        by_boot[json.loads(next(iter(payloads)))["boot"]].append(seq)
    assert sorted(by_boot) == [1, 2, 3]
    for seqs in by_boot.values():
        assert sorted(seqs) == list(range(min(seqs), max(seqs) + 1))
    watch.check()


def test_wrong_password_is_reported_and_retried(
    tmp_path: Path, mosquitto, subscriber, privacy, color_int8, canary_video
) -> None:
    broker = mosquitto(users={"agent": "right", "watcher": "watch"})
    sub = subscriber(broker, "edge/#", username="watcher", password="watch")
    (tmp_path / "pw").write_text("wrong\n")
    config = write_config(
        tmp_path / "config.yaml",
        broker,
        [camera_pipeline(color_int8.path, canary_video)],
        mqtt={"username": "agent", "password_file": str(tmp_path / "pw")},
    )
    canary = ImageCanary([canary_frame()])
    watch = privacy(broker, config, canary=canary, username="watcher", password="watch")
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        with Agents(tmp_path) as agents:
            agent = agents.start(config, {"NOTIFY_SOCKET": str(notify.path)})
            agent.wait_log("refused the connection", timeout=20)
            log = agent.log()
            assert "password" in log.lower() or "not authori" in log.lower(), log
            assert "Traceback" not in log
            notify.wait_for("READY=1", timeout=20)
            deadline = time.monotonic() + 10
            while not any(s.startswith("STATUS=") and "refused" in s for _, s in notify.received):
                assert time.monotonic() < deadline, notify.received
                notify.poll(0.2)
            # it keeps trying: the broker sees repeated refused logins
            deadline = time.monotonic() + 15
            while broker.log_tail(200).count("not authorised") < 3:
                assert time.monotonic() < deadline, broker.log_tail()
                assert agent.proc.poll() is None, agent.log()
                time.sleep(0.2)
            # the admin fixes the broker side: the next retry gets in, queued results arrive
            assert results(sub.snapshot()) == []
            broker.set_users({"agent": "wrong", "watcher": "watch"})
            got = sub.wait_for(lambda m: len(results(m)) >= 10, timeout=30)
            assert results(got)[0]["seq"] == 1  # results from before the login were kept, not dropped
            assert agent.stop() == 0
        watch.check()
    finally:
        notify.close()


def install_model(source, model: Path) -> None:
    """Copy a .tflite and its manifest to ``model`` as a deploy would (model_file renamed to match)."""
    model.parent.mkdir(exist_ok=True)
    shutil.copy(source.path, model)
    manifest = json.loads(source.manifest_path.read_text())
    manifest["model_file"] = model.name
    model.with_suffix(".json").write_text(json.dumps(manifest))


def test_sighup_corrupt_model_keeps_the_old_one_then_a_good_one_is_taken(
    tmp_path: Path, mosquitto, subscriber, privacy, color_int8, color_uint8, canary_video
) -> None:
    model = tmp_path / "model" / "color.tflite"
    install_model(color_int8, model)
    broker = mosquitto()
    sub = subscriber(broker, "edge/#")
    config = write_config(tmp_path / "config.yaml", broker, [camera_pipeline(model, canary_video)])
    watch = privacy(broker, config, canary=ImageCanary([canary_frame()]))
    with Agents(tmp_path) as agents:
        agent = agents.start(config)
        first = results(sub.wait_for(lambda m: len(results(m)) >= 5, timeout=30))
        model.write_bytes(b"TFL3" + b"\x00" * 100)  # a broken copy lands on the device
        agent.send(signal.SIGHUP)
        log = agent.wait_log("keeps its old model", timeout=20)
        assert "color.tflite" in log
        after = len(results(sub.snapshot()))
        later = results(sub.wait_for(lambda m: len(results(m)) >= after + 10, timeout=30))[after:]
        assert {r["model"]["sha256"] for r in later} == {first[0]["model"]["sha256"]}
        assert agent.proc.poll() is None

        def reload_failure_on_stats(messages: list) -> bool:
            for topic, payload, _retain in messages:
                if topic == "edge/testdev/stats":
                    entry = validate_payload(payload, "stats")["pipelines"]["cam"]
                    if entry["state"] == "running" and "reload failed" in (entry["last_error"] or ""):
                        return True
            return False

        sub.wait_for(reload_failure_on_stats, timeout=10)  # subscribers see it too, not only the log

        good_config = config.read_text()
        config.write_text(good_config + "pipelines_typo: 1\n")  # an edit with a mistake: rejected as a whole
        agent.send(signal.SIGHUP)
        agent.wait_log("the new config is invalid, keeping the running one", timeout=20)
        assert "pipelines_typo: unknown key" in agent.log()
        config.write_text(good_config)

        install_model(color_uint8, model)  # a good model this time: taken between two frames
        agent.send(signal.SIGHUP)
        new_prefix = hashlib.sha256(color_uint8.path.read_bytes()).hexdigest()[:12]
        swapped = results(
            agent.expect(sub, lambda m: any(r["model"]["sha256"] == new_prefix for r in results(m)))
        )
        seqs = [r["seq"] for r in swapped]
        assert seqs == list(range(1, len(seqs) + 1))  # one seq series across the swap, nothing lost
        # The failure is over once the config's model runs: the stats stop saying "reload failed".
        since = len(sub.snapshot())
        later_stats = stats(agent.expect(sub, lambda m: stats(m[since:]), timeout=15)[since:])
        assert later_stats[0]["pipelines"]["cam"]["last_error"] is None, later_stats[0]["pipelines"]["cam"]
        assert agent.stop() == 0, agent.log()
    watch.check()


def test_sigterm_with_broker_down_is_bounded_and_keeps_the_outbox(
    tmp_path: Path, mosquitto, color_int8, test_video
) -> None:
    broker = mosquitto()
    broker.stop()  # a broker that is down for the whole run
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "config.yaml", broker, [camera_pipeline(color_int8.path, test_video)], drain_timeout_s=1.0
    )
    with Agents(tmp_path) as agents:
        agent = agents.start(config)
        deadline = time.monotonic() + 30
        while len(outbox_seqs(state)) < 10:
            assert time.monotonic() < deadline and agent.proc.poll() is None, agent.log()
            time.sleep(0.1)
        started = time.monotonic()
        assert agent.stop(timeout=20) == 0, agent.log()
        assert time.monotonic() - started < 8  # drain_timeout_s=1 plus the pipeline and paho teardown
    queued = outbox_seqs(state)
    assert len(queued) >= 10 and f"{len(queued)} results are still in the outbox" in agent.log()


def sensor_pipeline(model: Path, sysfs_root: Path) -> dict:
    source = {"type": "iio", "device": "adxl345", "channels": ["accel_x", "accel_y", "accel_z"],
              "rate_hz": 50, "sysfs_root": str(sysfs_root)}  # fmt: skip
    return {"name": "vib", "source": source, "window": {"size": 2, "hop": 2}, "model": {"path": str(model)}}


@pytest.mark.parametrize(
    "wrong, reason",
    [
        ("image_model", "but the source gives sensor samples"),
        ("window_shape", "but a window of 2 samples x 3 channels has 6"),
    ],
)
def test_sighup_model_that_does_not_fit_the_source_keeps_the_old_one(
    tmp_path: Path, mosquitto, privacy, regression_int8, color_int8, autoencoder_int8, wrong: str, reason: str
) -> None:
    """A model that loads fine but does not fit this pipeline (an image model behind a sensor, or a sensor
    model expecting 8 values from a window of 2 x 3) is refused before the swap: the old one keeps running
    and subscribers see why on the stats topic."""
    from tests.test_pipeline_sensors import make_iio_device

    model = tmp_path / "model" / "vib.tflite"
    install_model(regression_int8, model)
    make_iio_device(tmp_path / "iio", [100, 250, 400], 0.001)
    broker = mosquitto()
    config = write_config(tmp_path / "config.yaml", broker, [sensor_pipeline(model, tmp_path / "iio")])
    watch = privacy(broker, config)
    sub = watch.sub
    with Agents(tmp_path) as agents:
        agent = agents.start(config)
        first = results(agent.expect(sub, lambda m: len(results(m)) >= 5))
        install_model(color_int8 if wrong == "image_model" else autoencoder_int8, model)
        agent.send(signal.SIGHUP)
        log = agent.wait_log("keeps its old model", timeout=20)
        assert reason in log, log[-2000:]

        def reload_failure_on_stats(messages: list) -> bool:
            for entry in (s["pipelines"]["vib"] for s in stats(messages)):
                if entry["state"] == "running" and reason in (entry["last_error"] or ""):
                    return "reload failed" in entry["last_error"]
            return False

        agent.expect(sub, reload_failure_on_stats, timeout=15)
        after = len(results(sub.snapshot()))
        later = results(agent.expect(sub, lambda m: len(results(m)) >= after + 10))[after:]
        assert {r["model"]["sha256"] for r in later} == {first[0]["model"]["sha256"]}
        assert all("values" in r for r in later)  # still the regression model's results
        assert agent.proc.poll() is None, agent.log()
        assert agent.stop() == 0, agent.log()
    watch.check()


def test_full_state_file_system_drops_counts_and_recovers(
    tmp_path: Path, mosquitto, subscriber, privacy, regression_int8
) -> None:
    """The state directory on a small real tmpfs that fills up while the daemon runs: results are dropped
    and counted, the daemon keeps running, and it stores and delivers again by itself once there is room."""
    with small_tmpfs(tmp_path / "state", "3m") as state:
        broker = mosquitto()
        sub = subscriber(broker, "edge/testdev/#")
        lines = "import time\nwhile True:\n    print('0.25,0.5,0.75', flush=True)\n    time.sleep(0.01)"
        source = {"type": "command", "argv": ["python3", "-c", lines]}
        pipeline = {"name": "vib", "source": source, "window": {"size": 2, "hop": 2},
                    "model": {"path": str(regression_int8.path)}}  # fmt: skip
        config = write_config(tmp_path / "config.yaml", broker, [pipeline])
        watch = privacy(broker, config)
        with Agents(tmp_path) as agents:
            agent = agents.start(config)
            sub.wait_for(lambda m: len(results(m)) >= 20, timeout=30)
            filler = fill(state)  # the disk fills up under the running daemon
            deadline = time.monotonic() + 30
            while "the file system is full" not in agent.log():
                assert time.monotonic() < deadline and agent.proc.poll() is None, agent.log()
                time.sleep(0.2)
            time.sleep(2)  # results keep coming while nothing can be stored
            assert agent.proc.poll() is None, agent.log()
            filler.unlink()  # room again
            before = len(results(sub.snapshot()))
            sub.wait_for(lambda m: len(results(m)) >= before + 50, timeout=30)
            seen = sub.wait_for(lambda m: any(s["outbox"]["dropped"] > 0 for s in stats(m)), timeout=15)
            final = stats(seen)
            assert agent.proc.poll() is None, agent.log()
            assert agent.stop() == 0, agent.log()
        dropped = max(s["outbox"]["dropped"] for s in final)
        assert dropped > 0 and "storing again" in agent.log()
        seqs = sorted(r["seq"] for r in results(sub.snapshot()))
        assert len(seqs) == len(set(seqs))  # nothing repeated
        watch.check()
