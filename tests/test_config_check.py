"""``edge-agent check`` and ``edge-agent run`` start-up errors as a user sees them: the exit code and
one clear message on stderr, never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from edge_agent.errors import ConfigError, ModelError, SourceError
from tests.test_pipeline_sensors import make_iio_device


def edge_agent(
    *args: str, cwd: Path, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=env,
    )


def write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def cameras_config(urls: list[str]) -> dict:
    """One camera pipeline per url (c0, c1, ...), each with m.tflite (for --no-models)."""
    return {
        "device_id": "checkdev",
        "mqtt": {"host": "127.0.0.1", "port": 1},
        "state_dir": "state",
        "pipelines": [
            {"name": f"c{i}", "source": {"type": "camera", "url": url}, "model": {"path": "m.tflite"}}
            for i, url in enumerate(urls)
        ],
    }


def base(model: Path, video: Path | str) -> dict:
    return {
        "device_id": "checkdev",
        "mqtt": {"host": "127.0.0.1", "port": 1},
        "state_dir": "state",
        "pipelines": [
            {"name": "cam", "source": {"type": "camera", "url": str(video)}, "model": {"path": str(model)}}
        ],
    }


def test_check_ok_prints_summary_and_loads_models(tmp_path: Path, color_int8, test_video) -> None:
    proc = edge_agent("check", str(write(tmp_path, base(color_int8.path, test_video))), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "OK: device 'checkdev'" in proc.stdout
    assert "cam: camera" in proc.stdout and "edge/checkdev/cam/result (qos 1, every)" in proc.stdout
    assert "input [1, 32, 32, 3] int8 on litert" in proc.stdout
    assert "models: OK" in proc.stdout


def test_check_lists_every_config_error_and_exits_2(tmp_path: Path, color_int8, test_video) -> None:
    cfg = base(color_int8.path, test_video)
    cfg["pipelines"][0]["publish"] = {"qos": 3, "policy": "often"}
    cfg["mqtt"]["port"] = 0
    cfg["pipelines"][0]["source"]["fsp"] = 10
    proc = edge_agent("check", str(write(tmp_path, cfg)), cwd=tmp_path)
    assert proc.returncode == ConfigError.exit_code
    for line in (
        "pipelines[0].publish.qos: input should be 0, 1 or 2 (got 3)",
        "pipelines[0].publish.policy: input should be 'every', 'on_change' or 'interval' (got 'often')",
        "mqtt.port: input should be greater than or equal to 1 (got 0)",
        "pipelines[0].source.fsp: unknown key; did you mean 'fps'?",
    ):
        assert line in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_missing_files_exit_2(tmp_path: Path, color_int8) -> None:
    cfg = base(color_int8.path, tmp_path / "nope.mp4")
    cfg["mqtt"] |= {"username": "u", "password_file": "missing-password"}
    proc = edge_agent("check", str(write(tmp_path, cfg)), cwd=tmp_path)
    assert proc.returncode == ConfigError.exit_code
    assert (
        f"pipelines[0].source: camera url: video file {tmp_path / 'nope.mp4'} does not exist" in proc.stderr
    )
    assert "mqtt.password_file" in proc.stderr and "missing-password does not exist" in proc.stderr


def test_check_yaml_error_and_missing_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipelines:\n  - name: [x\n")
    proc = edge_agent("check", str(bad), cwd=tmp_path)
    assert proc.returncode == ConfigError.exit_code and "YAML syntax error at line" in proc.stderr
    proc = edge_agent("check", str(tmp_path / "none.yaml"), cwd=tmp_path)
    assert proc.returncode == ConfigError.exit_code and "none.yaml: config file not found" in proc.stderr


def test_check_corrupt_model_exit_3(tmp_path: Path, color_int8, test_video) -> None:
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"\x00" * 64)
    proc = edge_agent("check", str(write(tmp_path, base(broken, test_video))), cwd=tmp_path)
    assert proc.returncode == ModelError.exit_code, proc.stderr
    assert "pipelines[0].model" in proc.stderr and "broken.tflite" in proc.stderr
    assert "Traceback" not in proc.stderr
    # --no-models: only that the file is there
    assert edge_agent("check", "--no-models", str(tmp_path / "config.yaml"), cwd=tmp_path).returncode == 0


def test_check_model_that_does_not_fit_the_source(tmp_path: Path, regression_int8, test_video) -> None:
    """A tensor model behind a camera: found by check, not at the first frame."""
    proc = edge_agent("check", str(write(tmp_path, base(regression_int8.path, test_video))), cwd=tmp_path)
    assert proc.returncode == ModelError.exit_code, proc.stdout + proc.stderr
    assert "but the source is a camera" in proc.stderr


def test_run_startup_errors_are_one_line(tmp_path: Path, color_int8, test_video) -> None:
    # a video file that does not exist
    proc = edge_agent("run", str(write(tmp_path, base(color_int8.path, tmp_path / "gone.avi"))), cwd=tmp_path)
    assert proc.returncode == SourceError.exit_code, proc.stderr
    assert "gone.avi" in proc.stderr and "Traceback" not in proc.stderr
    # a corrupt model
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"TFL3" * 8)
    proc = edge_agent("run", str(write(tmp_path, base(broken, test_video))), cwd=tmp_path)
    assert proc.returncode == ModelError.exit_code, proc.stderr
    assert "broken.tflite" in proc.stderr and "Traceback" not in proc.stderr
    # a bad config
    proc = edge_agent("run", str(write(tmp_path, {"pipelines": []})), cwd=tmp_path)
    assert proc.returncode == ConfigError.exit_code
    assert "pipelines: list should have at least 1 item" in proc.stderr and "Traceback" not in proc.stderr


def test_check_schema_describes_the_config(tmp_path: Path) -> None:
    """The printed JSON Schema (for editors' YAML support) accepts a valid config and rejects a typo."""
    import json

    import jsonschema

    proc = edge_agent("check", "--schema", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    good = base(Path("m.tflite"), "clip.mp4")
    jsonschema.validate(good, schema)
    good["pipelines"][0]["publish"] = {"qos": 1, "polcy": "every"}
    try:
        jsonschema.validate(good, schema)
    except jsonschema.ValidationError as exc:
        assert "polcy" in exc.message
    else:
        raise AssertionError("the schema accepted an unknown key")
    assert schema["properties"]["drain_timeout_s"]["description"]


def test_swapped_model_file_is_refused_at_start_exit_3(
    tmp_path: Path, color_int8, color_uint8, test_video
) -> None:
    """A valid .tflite that is not the one its manifest describes (copied over it alone): ``check`` and
    ``run`` both refuse it before touching the source or the broker, with exit 3 and what to do."""
    import json
    import shutil

    model = tmp_path / "model" / "color.tflite"
    model.parent.mkdir()
    shutil.copy(color_int8.path, model)
    manifest = json.loads(color_int8.manifest_path.read_text())
    manifest["model_file"] = model.name
    model.with_suffix(".json").write_text(json.dumps(manifest))
    config = write(tmp_path, base(model, test_video))
    assert edge_agent("check", str(config), cwd=tmp_path).returncode == 0  # the pair as shipped is fine
    shutil.copy(color_uint8.path, model)  # a different, working model lands without its manifest
    for command in ("check", "run"):
        proc = edge_agent(command, str(config), cwd=tmp_path)
        assert proc.returncode == ModelError.exit_code, (command, proc.stdout, proc.stderr)
        assert f"{model}: sha256 " in proc.stderr and "does not match its manifest" in proc.stderr, (
            proc.stderr
        )
        assert "the model was replaced or damaged: copy the .tflite and .json together" in proc.stderr
        assert "Traceback" not in proc.stderr


def _sensor(model: Path, source: dict, size: int) -> dict:
    return {
        "device_id": "checkdev",
        "mqtt": {"host": "127.0.0.1", "port": 1},
        "state_dir": "state",
        "pipelines": [
            {
                "name": "vib",
                "source": source,
                "window": {"size": size, "hop": size},
                "model": {"path": str(model)},
            }
        ],
    }


def test_window_that_does_not_fit_the_model_is_refused_by_check_and_run(
    tmp_path: Path, regression_int8
) -> None:
    """regression_int8 takes 6 values: 3 IIO channels need windows of 2 samples, not 4."""
    make_iio_device(tmp_path / "sys", [1, 2, 3], 0.01)
    channels = ["accel_x", "accel_y", "accel_z"]
    iio = {"type": "iio", "device": "adxl345", "channels": channels, "sysfs_root": str(tmp_path / "sys")}
    config = write(tmp_path, _sensor(regression_int8.path, iio, 4))
    checked = edge_agent("check", str(config), cwd=tmp_path)
    assert checked.returncode == ModelError.exit_code, checked.stdout + checked.stderr
    assert "a window of 4 samples x 3 channels has 12; window size 2 would fit" in checked.stderr
    assert "Traceback" not in checked.stderr
    ran = edge_agent("run", str(config), cwd=tmp_path)
    assert ran.returncode == ModelError.exit_code, ran.stderr[-2000:]
    assert "window size 2 would fit" in ran.stderr and "Traceback" not in ran.stderr

    csv = tmp_path / "samples.csv"
    csv.write_text("1,2,3\n" * 8)
    unknown = write(tmp_path, _sensor(regression_int8.path, {"type": "file", "path": str(csv)}, 4))
    checked = edge_agent("check", str(unknown), cwd=tmp_path)  # channels unknown: 4 does not divide 6
    assert checked.returncode == ModelError.exit_code
    assert "cannot fill for any number of channels" in checked.stderr

    fits = write(tmp_path, _sensor(regression_int8.path, {"type": "file", "path": str(csv)}, 2))
    assert edge_agent("check", str(fits), cwd=tmp_path).returncode == 0


def test_check_reports_config_and_model_problems_in_one_pass(tmp_path: Path, regression_int8) -> None:
    csv = tmp_path / "samples.csv"
    csv.write_text("1,2,3\n")
    cfg = _sensor(regression_int8.path, {"type": "file", "path": str(tmp_path / "missing.csv")}, 4)
    cfg["pipelines"].append(dict(cfg["pipelines"][0], name="vib2", source={"type": "file", "path": str(csv)}))
    proc = edge_agent("check", str(write(tmp_path, cfg)), cwd=tmp_path)
    assert proc.returncode == ConfigError.exit_code
    assert "missing.csv does not exist" in proc.stderr  # the config problem...
    assert "cannot fill for any number of channels" in proc.stderr  # ...and the model problems, one run
    assert "1 config problem(s) and 2 model problem(s), listed above" in proc.stderr


def test_finite_run_with_the_broker_away_exits_6_and_keeps_the_results(
    tmp_path: Path, regression_int8
) -> None:
    csv = tmp_path / "samples.csv"
    csv.write_text("0.1,0.2,0.3\n" * 10)  # 5 windows of 2 samples x 3 channels
    cfg = _sensor(regression_int8.path, {"type": "file", "path": str(csv)}, 2)
    cfg["drain_timeout_s"] = 0.5  # nothing listens on port 1
    proc = edge_agent("run", str(write(tmp_path, cfg)), cwd=tmp_path)
    assert proc.returncode == 6, proc.stderr[-2000:]
    assert "5 result(s) could not be delivered" in proc.stderr and "sent at the next start" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_start_up_error_is_not_preceded_by_a_stop_report(tmp_path: Path, regression_int8) -> None:
    cfg = _sensor(regression_int8.path, {"type": "file", "path": str(tmp_path / "gone.csv")}, 2)
    proc = edge_agent("run", str(write(tmp_path, cfg)), cwd=tmp_path)
    assert proc.returncode == SourceError.exit_code, proc.stderr[-2000:]
    assert "results left in the outbox" not in proc.stderr


def test_check_says_whether_remote_deployment_is_on(tmp_path: Path) -> None:
    from edge_agent.fleet.signing import generate_keypair

    model = tmp_path / "m.tflite"
    model.write_bytes(b"not loaded with --no-models")
    cfg = base(model, "/dev/video0")
    cfg["fleet"] = {"trusted_keys_dir": "keys", "groups": ["lobby"]}  # relative: to the config's folder
    proc = edge_agent("check", "--no-models", str(write(tmp_path, cfg)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"fleet: remote deployment is off: no trusted keys in {tmp_path / 'keys'}" in proc.stdout
    _, public, _ = generate_keypair(tmp_path / "op")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "op.pub").write_bytes(public.read_bytes())
    proc = edge_agent("check", "--no-models", str(write(tmp_path, cfg)), cwd=tmp_path)
    assert "fleet: remote deployment is on: 1 trusted key(s)" in proc.stdout, proc.stdout + proc.stderr
    assert "groups: lobby" in proc.stdout
    (tmp_path / "keys" / "typo.pub").write_text("not a key\n")
    proc = edge_agent("check", "--no-models", str(write(tmp_path, cfg)), cwd=tmp_path)
    assert proc.returncode == ConfigError.exit_code
    assert "typo.pub is not an Ed25519 public key" in proc.stderr and "Traceback" not in proc.stderr
    cfg["fleet"] = {"groups": ["a/b"], "watch": 5}
    proc = edge_agent("check", "--no-models", str(write(tmp_path, cfg)), cwd=tmp_path)
    assert proc.returncode == ConfigError.exit_code
    assert "fleet.groups" in proc.stderr
    assert "fleet.watch: unknown key; did you mean 'watch_s'?" in proc.stderr


def test_check_loads_the_tls_files_as_the_start_does(tmp_path: Path) -> None:
    """A CA file that is not a certificate, or a client key that does not match its certificate, passed
    `check` and stopped `run` (exit 2): check now loads them as the MQTT client does."""
    from tests.fixtures.broker import make_tls_files

    tls = make_tls_files(tmp_path / "tls")
    other = make_tls_files(tmp_path / "other")
    (tmp_path / "s.csv").write_text("1,2,3\n")
    (tmp_path / "m.tflite").write_bytes(b"")  # --no-models: only that it is there
    cfg = {
        "device_id": "checkdev",
        "mqtt": {"host": "127.0.0.1", "port": 1},
        "state_dir": "state",
        "pipelines": [{"name": "s", "source": {"type": "file", "path": str(tmp_path / "s.csv")},
                       "window": {"size": 2, "hop": 2}, "model": {"path": "m.tflite"}}],
    }  # fmt: skip
    cases = {
        "good": (
            {"ca_file": str(tls.ca_cert), "cert_file": str(tls.client_cert), "key_file": str(tls.client_key)},
            None,
        ),
        "not a certificate": ({"ca_file": str(tmp_path / "s.csv")}, "NO_CERTIFICATE_OR_CRL_FOUND"),
        "another's key": (
            {
                "ca_file": str(tls.ca_cert),
                "cert_file": str(tls.client_cert),
                "key_file": str(other.client_key),
            },
            "KEY_VALUES_MISMATCH",
        ),
    }
    for name, (files, says) in cases.items():
        cfg["mqtt"]["tls"] = files
        proc = edge_agent("check", "--no-models", str(write(tmp_path, cfg)), cwd=tmp_path)
        if says is None:
            assert proc.returncode == 0, (name, proc.stderr)
        else:
            assert proc.returncode == ConfigError.exit_code, (name, proc.stdout)
            assert "mqtt.tls: cannot load the TLS files" in proc.stderr and says in proc.stderr, proc.stderr


def test_check_asks_each_sensor_source_what_its_start_asks(tmp_path: Path) -> None:
    """An IIO device or channel, or a command's program, that is not there passed check and stopped run
    (exit 5); check now makes the start's own checks (nothing is opened, no thread started)."""
    make_iio_device(tmp_path / "sys", [1, 2, 3], 0.01)
    (tmp_path / "m.tflite").write_bytes(b"")  # --no-models: only that it is there
    sys_root = str(tmp_path / "sys")
    sources = [
        {"type": "iio", "device": "bme280", "channels": ["accel_x"], "sysfs_root": sys_root},
        {"type": "iio", "device": "adxl345", "channels": ["accel_x", "anglvel_z"], "sysfs_root": sys_root},
        {"type": "command", "argv": ["no-such-sensor-tool", "--json"]},
        {
            "type": "iio",
            "device": "adxl345",
            "channels": ["accel_x", "accel_y", "accel_z"],
            "sysfs_root": sys_root,
        },
    ]
    cfg = {
        "device_id": "checkdev",
        "mqtt": {"host": "127.0.0.1", "port": 1},
        "state_dir": "state",
        "pipelines": [
            {"name": f"s{i}", "source": s, "window": {"size": 2, "hop": 2}, "model": {"path": "m.tflite"}}
            for i, s in enumerate(sources)
        ],
    }
    proc = edge_agent("check", "--no-models", str(write(tmp_path, cfg)), cwd=tmp_path)
    assert proc.returncode == ConfigError.exit_code, proc.stdout + proc.stderr
    assert "3 config problem(s)" in proc.stderr, proc.stderr
    assert "pipelines[0].source: iio device: no IIO device called 'bme280'" in proc.stderr
    assert "found: iio:device0 (adxl345)" in proc.stderr
    assert "pipelines[1].source: iio channels:" in proc.stderr and "no channel 'anglvel_z'" in proc.stderr
    assert "pipelines[2].source: command argv: program 'no-such-sensor-tool' was not found" in proc.stderr
    assert "pipelines[3]" not in proc.stderr


def test_check_decodes_a_video_file_as_the_start_does(tmp_path: Path, test_video: Path) -> None:
    """A video file that is there but does not decode (cut short before its first frame, not a video at all)
    passed check and stopped run (exit 5, no restart fixes it): check now opens it and decodes its first
    frame, as the start does. A folder is named as one; a camera device or stream is left to its retries."""
    (tmp_path / "m.tflite").write_bytes(b"")  # --no-models: only that it is there
    (tmp_path / "notes.mp4").write_text("not a video\n")
    (tmp_path / "clips").mkdir()
    urls = [
        "notes.mp4",
        "clips",
        f"file://{test_video}",
        str(test_video),
        "/dev/video97",
        "rtsp://op:s3cret@127.0.0.1:1/x",
    ]
    cfg = cameras_config(urls)
    proc = edge_agent("check", "--no-models", str(write(tmp_path, cfg)), cwd=tmp_path)
    assert proc.returncode == ConfigError.exit_code, proc.stdout + proc.stderr
    assert "2 config problem(s)" in proc.stderr, proc.stderr
    notes = tmp_path / "notes.mp4"
    assert (
        f"pipelines[0].source: camera url: cannot decode video file {notes}: check that it plays"
        in proc.stderr
    )
    assert f"pipelines[1].source: camera url: video file {tmp_path / 'clips'} is a directory" in proc.stderr
    assert "Traceback" not in proc.stderr
    del cfg["pipelines"][:2]
    proc = edge_agent("check", "--no-models", str(write(tmp_path, cfg)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"c2: camera {test_video} ->" in proc.stdout  # a file URL is the file
    assert "c5: camera rtsp://op:***@127.0.0.1:1/x ->" in proc.stdout and "s3cret" not in proc.stdout
    # a camera device not plugged in is waited for by the daemon: a note, not a problem
    assert "1 note(s):\n  pipelines[2].source: camera device /dev/video97 is not there now" in proc.stderr


def test_check_reads_a_credential_as_the_service_would(tmp_path: Path, monkeypatch) -> None:
    """The shipped setup (mqtt.password_credential, the unit's LoadCredential=) failed `edge-agent check` run
    by hand, as the README's step 3 says, with "CREDENTIALS_DIRECTORY is not set": check now reads the file
    the unit names, as `probe` does and as systemd will."""
    from click.testing import CliRunner

    from edge_agent.cli import cli
    from edge_agent.commands import check

    (tmp_path / "m.tflite").write_bytes(b"")  # --no-models: only that it is there
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    unit = tmp_path / "edge-agent.service"
    unit.write_text(f"[Service]\nLoadCredential=mqtt-password:{secret}\n")
    drop_in = tmp_path / "edge-agent.service.d" / "override.conf"  # what `systemctl edit` writes
    drop_in.parent.mkdir()
    drop_in.write_text(f"[Service]\nLoadCredential=door:{secret}\n")
    cfg = base(tmp_path / "m.tflite", "rtsp://admin@127.0.0.1:1/x")
    cfg["pipelines"][0]["source"]["password_credential"] = "door"  # a camera's login, the same way
    cfg["mqtt"] |= {"username": "edge-device", "password_credential": "mqtt-password"}
    config = str(write(tmp_path, cfg))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setattr(check, "DEFAULT_UNIT", unit)
    result = CliRunner().invoke(cli, ["check", "--no-models", config])
    assert result.exit_code == 0, result.output
    unit.write_text(f"[Service]\nLoadCredential=mqtt-password:{tmp_path}\n")  # not readable as a file
    result = CliRunner().invoke(cli, ["check", "--no-models", config])
    assert isinstance(result.exception, ConfigError), result.output
    assert f"cannot read {tmp_path} (Is a directory), which LoadCredential=mqtt-password" in result.output
    unit.write_text("[Service]\n")
    drop_in.unlink()
    result = CliRunner().invoke(cli, ["check", "--no-models", config])
    assert isinstance(result.exception, ConfigError), result.output  # one line and exit 2 from run_cli
    assert "mqtt.password_credential needs LoadCredential=mqtt-password" in result.output
    assert "pipelines[0].source.password_credential needs LoadCredential=door" in result.output


def test_a_camera_named_by_its_number_among_two_gets_a_note_with_its_steady_name(tmp_path: Path) -> None:
    """With two USB cameras, /dev/video0 is whichever the kernel found first, so a reboot may swap the door
    and the yard: check names udev's by-id link instead. /dev and /sys are folders of their shape (the dev
    folder under /dev/shm: a path outside /dev is a video file, not a device)."""
    dev = Path("/dev/shm") / f"edge-agent-test-dev-{tmp_path.name}"
    sys_ = tmp_path / "sys"
    shutil.rmtree(dev, ignore_errors=True)
    (dev / "v4l/by-id").mkdir(parents=True)
    try:
        for node, serial in ((0, "1A2B"), (2, "3C4D")):
            (dev / f"video{node}").write_text("")
            (dev / f"v4l/by-id/usb-046d_C920_{serial}-video-index0").symlink_to(f"../../video{node}")
            (sys_ / f"class/video4linux/video{node}").mkdir(parents=True)
            (sys_ / f"class/video4linux/video{node}/name").write_text("HD Pro Webcam C920\n")
            (sys_ / f"class/video4linux/video{node}/index").write_text("0\n")
        for node, name in ((10, "bcm2835-codec-decode"), (12, "bcm2835-isp"), (19, "rpi-hevc-dec")):
            (dev / f"video{node}").write_text("")  # every Pi has these: they are no cameras
            (sys_ / f"class/video4linux/video{node}").mkdir(parents=True)
            (sys_ / f"class/video4linux/video{node}/name").write_text(name + "\n")
            (sys_ / f"class/video4linux/video{node}/index").write_text("0\n")
        (tmp_path / "m.tflite").write_bytes(b"")
        urls = [str(dev / "video0"), str(dev / "v4l/by-id/usb-046d_C920_3C4D-video-index0")]
        cfg = cameras_config(urls)
        env = {**os.environ, "EDGE_AGENT_DEV_ROOT": str(dev), "EDGE_AGENT_SYSFS_ROOT": str(sys_)}
        config = write(tmp_path, cfg)
        proc = edge_agent("check", "--no-models", str(config), cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert (
            f"1 note(s):\n  pipelines[0].source.url: {dev}/video0 is one of 2 cameras here, and their "
            f"numbers may swap at the next boot: name it {dev}/v4l/by-id/usb-046d_C920_1A2B-video-index0"
        ) in proc.stderr  # and not the second pipeline: its link follows its camera
        (dev / "video2").unlink()  # the yard camera unplugged: the door's number is its own now
        proc = edge_agent("check", "--no-models", str(config), cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "1 note(s):\n  pipelines[1].source: camera device" in proc.stderr  # (it is waited for)
        assert "cameras here" not in proc.stderr
    finally:
        shutil.rmtree(dev, ignore_errors=True)
