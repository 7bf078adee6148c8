"""A device or workstation without an optional package: ``edge-agent check`` names each one the config
needs (the key that needs it, the extra that brings it) before the service is started, and ``run`` and
``edge-fleet`` stop with exit 7 and one line, never a traceback. A package is made missing the way Python
sees an absent one: ``sys.modules[name] = None`` in a child process, before anything is imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edge_agent.errors import ConfigError, DependencyError
from edge_agent.fleet.signing import generate_keypair

CAMERA = "pip install 'edge-agent[camera]'"
SERIAL = "pip install 'edge-agent[serial]'"
DEVICE = "pip install 'edge-agent[device]'"
FLEET = "pip install 'edge-agent[fleet]'"
WINDOW = {"size": 4, "hop": 4}
PIPELINES = {
    "camera": {
        "name": "cam",
        "source": {"type": "camera", "url": "/dev/video0"},
        "model": {"path": "m.tflite"},
    },
    "serial": {
        "name": "vib",
        "source": {"type": "serial", "port": "/dev/ttyUSB0"},
        "window": WINDOW,
        "model": {"path": "m.tflite"},
    },
    "file": {
        "name": "csv",
        "source": {"type": "file", "path": "x.csv"},
        "window": WINDOW,
        "model": {"path": "m.tflite"},
    },
}


def without(modules: tuple[str, ...], module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` in a Python where importing any of ``modules`` fails."""
    code = (
        "import runpy, sys\n"
        f"sys.modules.update(dict.fromkeys({list(modules)!r}))  # as if they were not installed\n"
        f"sys.argv = {[module, *args]!r}\n"
        f"runpy.run_module({module!r}, run_name='__main__')\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=60)


def check(tmp_path: Path, *modules: str) -> subprocess.CompletedProcess[str]:
    """``edge-agent check --no-models config.yaml`` without ``modules``."""
    return without(modules, "edge_agent.cli", "check", "--no-models", "config.yaml", cwd=tmp_path)


def write_config(tmp_path: Path, *sources: str, **extra: object) -> None:
    """A config with one pipeline per source kind named; the model is not loaded (``check --no-models``)."""
    (tmp_path / "m.tflite").write_bytes(b"not loaded with --no-models")
    cfg = {
        "device_id": "d",
        "mqtt": {"host": "127.0.0.1", "port": 1},
        "state_dir": "state",
        "pipelines": [PIPELINES[s] for s in sources],
        **extra,
    }
    (tmp_path / "config.yaml").write_text(json.dumps(cfg))


def test_check_names_each_missing_package_the_config_needs(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("1,2\n")
    write_config(tmp_path, "camera", "serial", "file", metrics={"listen": "127.0.0.1:9108"})
    assert check(tmp_path).returncode == 0
    proc = check(tmp_path, "cv2", "serial", "prometheus_client")
    assert proc.returncode == DependencyError.exit_code, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == "config.yaml: 3 missing package(s):"
    assert lines[1].startswith("  pipelines[0].source (camera): opencv-python-headless is not installed (")
    assert lines[1].endswith(CAMERA)
    assert lines[2].startswith("  pipelines[1].source (serial): pyserial is not installed (")
    assert lines[2].endswith(SERIAL)
    assert lines[3].startswith("  metrics: prometheus-client is not installed (")
    assert lines[3].endswith(DEVICE)
    rest = lines[4:]
    if not Path("/dev/video0").exists():  # waited for by the daemon: a note, not a problem
        assert rest[0] == "1 note(s):"
        assert rest[1].startswith("  pipelines[0].source: camera device /dev/video0")
        rest = rest[2:]
    assert rest == ["edge-agent: error: config.yaml: 3 missing package(s), listed above"]
    assert "OK" not in proc.stdout
    # A sensor-only config needs none of them.
    write_config(tmp_path, "file")
    proc = check(tmp_path, "cv2", "serial", "prometheus_client")
    assert proc.returncode == 0, proc.stderr
    # A config problem is still exit 2, listed with the missing package in the same run.
    (tmp_path / "x.csv").unlink()
    write_config(tmp_path, "serial", "file")
    proc = check(tmp_path, "serial")
    assert proc.returncode == ConfigError.exit_code, proc.stderr
    assert "x.csv does not exist" in proc.stderr and SERIAL in proc.stderr
    assert "1 config problem(s) and 1 missing package(s), listed above" in proc.stderr


def test_run_stops_at_start_naming_every_missing_package_as_check_does(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("1,2\n")
    write_config(tmp_path, "serial", "file", metrics={"listen": "127.0.0.1:9108"})
    checked = check(tmp_path, "serial", "prometheus_client")
    run = without(("serial", "prometheus_client"), "edge_agent.cli", "run", "config.yaml", cwd=tmp_path)
    assert checked.returncode == run.returncode == DependencyError.exit_code, checked.stderr + run.stderr
    said = [line.removeprefix("  ") for line in checked.stderr.splitlines()[1:3]]
    assert said[0].startswith("pipelines[0].source (serial)") and said[1].startswith("metrics: ")
    assert run.stderr.splitlines() == [f"edge-agent: error: {'; '.join(said)}"]  # before anything started


def test_without_cryptography_keys_are_refused_by_name_and_a_keyless_device_still_checks(
    tmp_path: Path,
) -> None:
    proc = without(("cryptography",), "edge_agent.fleet.cli", "keygen", str(tmp_path / "op"), cwd=tmp_path)
    assert proc.returncode == DependencyError.exit_code, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()  # one line; what Python said of the import sits in between
    assert line.startswith("edge-fleet: error: cryptography is not installed (") and line.endswith(FLEET)
    assert not (tmp_path / "op").exists()
    # A device that trusts no key needs no cryptography: remote deployment is just off.
    (tmp_path / "x.csv").write_text("1,2\n")
    write_config(tmp_path, "file", fleet={"trusted_keys_dir": "keys"})
    proc = check(tmp_path, "cryptography")
    assert proc.returncode == 0, proc.stderr
    assert "remote deployment is off: no trusted keys" in proc.stdout
    # Once it holds a key, the daemon reads it at start (remote deployment on or off): check says so first.
    _, public, _ = generate_keypair(tmp_path / "real")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "op.pub").write_bytes(public.read_bytes())
    for enabled in (True, False):
        write_config(tmp_path, "file", fleet={"trusted_keys_dir": "keys", "enabled": enabled})
        proc = check(tmp_path, "cryptography")
        assert proc.returncode == DependencyError.exit_code, proc.stdout + proc.stderr
        assert proc.stderr.splitlines()[1].startswith(
            "  fleet.trusted_keys_dir: cryptography is not installed"
        )
        assert FLEET in proc.stderr and "Traceback" not in proc.stderr and "OK" not in proc.stdout


def test_check_knows_every_optional_package_the_daemon_imports(tmp_path: Path) -> None:
    """A package added to ``edge_agent.extras`` for the daemon must be one that ``check`` asks for too."""
    from edge_agent import extras
    from edge_agent.commands.check import needed_extras
    from edge_agent.config import load_config

    (tmp_path / "x.csv").write_text("1,2\n")
    write_config(tmp_path, "camera", "serial", "file", metrics={"listen": "127.0.0.1:9108"})
    every = {v for v in vars(extras).values() if isinstance(v, extras.Extra)}
    assert set(needed_extras(load_config(tmp_path / "config.yaml"))) == every
