"""scripts/install run for real into staging roots (--root): files, modes, idempotence, uninstall, refusals.

Most tests install a wheel built from this checkout with --no-deps (offline, seconds): they check what the
installer writes, not pip. One session fixture runs the full install with dependencies from the package
index, the way a device does, and is skipped only when pip itself cannot reach an index.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "scripts" / "install"
TEMPLATE = REPO / "edge_agent" / "templates" / "config.yaml"
SHIPPED_UNIT = REPO / "systemd" / "edge-agent.service"
UNIT = "etc/systemd/system/edge-agent.service"
WANTS = "etc/systemd/system/multi-user.target.wants/edge-agent.service"
CONF = "etc/edge-agent/config.yaml"
PASSWORD = "etc/edge-agent/mqtt-password"
STATE = "var/lib/edge-agent"
VENV = "opt/edge-agent/venv"
TEMPLATE_MODEL = "/var/lib/edge-agent/models/model.tflite"


def run_install(root: Path | None, *args: str, env: dict[str, str] | None = None, timeout: float = 300):
    cmd = ["bash", str(INSTALL), *(["--root", str(root)] if root is not None else []), *args]
    full_env = {**os.environ, "PIP_NO_INDEX": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)


def tree(root: Path, skip_venv: bool = True) -> dict[str, tuple[str, int, bytes | str | None]]:
    """path -> (kind, mode, content or link target), for comparing a root before and after."""
    out: dict[str, tuple[str, int, bytes | str | None]] = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if skip_venv and rel.startswith(VENV + "/"):
            continue
        st = p.lstat()
        if p.is_symlink():
            out[rel] = ("link", 0, os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), None)
        else:
            out[rel] = ("file", stat.S_IMODE(st.st_mode), p.read_bytes())
    return out


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture(scope="session")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of this checkout (the files git would ship), so builds write nothing into the shared one."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    src = tmp_path_factory.mktemp("checkout") / "edge-agent"
    for name in filter(None, files):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    return src


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory, checkout: Path) -> Path:
    """A wheel of this checkout."""
    out = tmp_path_factory.mktemp("wheel")
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip_wheel, "-w", str(out), str(checkout)], check=True, capture_output=True, timeout=300)
    (whl,) = out.glob("edge_agent-*.whl")
    return whl


def offline_args(wheel: Path) -> list[str]:
    return ["--python", sys.executable, "--wheel", str(wheel), "--no-deps"]


@pytest.fixture(scope="session")
def staged_once(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    root = tmp_path_factory.mktemp("staged") / "root"
    proc = run_install(root, *offline_args(wheel))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root


@pytest.fixture
def staged(tmp_path: Path, staged_once: Path) -> Path:
    """A fresh copy of an offline install (creating a venv takes many seconds on a busy machine). The venv's
    python is a symlink to the base interpreter, so the copy still answers the installer's version check."""
    root = tmp_path / "root"
    shutil.copytree(staged_once, root, symlinks=True)
    return root


# ---------------------------------------------------------------------------------------------- install


def test_install_writes_files_with_modes(staged: Path) -> None:
    unit = staged / UNIT
    assert unit.read_text() == SHIPPED_UNIT.read_text()  # default prefix: the unit as shipped
    assert mode(unit) == 0o644
    assert (staged / CONF).read_bytes() == TEMPLATE.read_bytes()
    assert mode(staged / CONF) == 0o644  # the service's dynamic user must read it
    assert mode(staged / "etc/edge-agent") == 0o755
    # LoadCredential= fails the start when its file is missing: an empty root-only one is there
    assert (staged / PASSWORD).read_bytes() == b"" and mode(staged / PASSWORD) == 0o600
    assert mode(staged / STATE) == 0o750 and mode(staged / STATE / "models") == 0o750
    assert (staged / "opt/edge-agent/README.md").read_text() == (REPO / "README.md").read_text()
    assert not (staged / WANTS).exists()  # not enabled without --enable


# The unit's device groups whose driver loads only when such a device is first plugged in on many boards, and
# that driver: systemd leaves a group out of the service's device policy when it is not registered at start.
LATE_DRIVERS = {"char-video4linux": "videodev", "char-ttyUSB": "usbserial", "char-ttyACM": "cdc_acm"}


def test_install_loads_the_drivers_of_the_units_device_groups_at_boot(staged: Path) -> None:
    allowed = [line.split("=", 1)[1].split()[0] for line in SHIPPED_UNIT.read_text().splitlines()
               if line.startswith("DeviceAllow=")]  # fmt: skip
    assert set(LATE_DRIVERS) <= set(allowed), allowed
    conf = staged / "etc/modules-load.d/edge-agent.conf"
    assert mode(conf) == 0o644
    listed = [line for line in conf.read_text().splitlines() if line and not line.startswith("#")]
    assert sorted(listed) == sorted(LATE_DRIVERS.values())


def test_install_puts_the_package_in_the_staged_venv(staged_once: Path) -> None:
    staged = staged_once
    python = staged / VENV / "bin" / "python"
    script = staged / VENV / "bin" / "edge-agent"
    assert script.read_text().splitlines()[0] == f"#!{python}"
    proc = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m, pathlib, edge_agent;"
         "print(m.version('edge-agent')); print(pathlib.Path(edge_agent.__file__).resolve())"],
        capture_output=True, text=True, check=True, cwd="/",
    )  # fmt: skip
    version, location = proc.stdout.split()
    assert version == "0.1.0"
    assert location.startswith(str((staged / VENV).resolve()))
    assert Path(location).parent.joinpath("templates", "config.yaml").read_bytes() == TEMPLATE.read_bytes()


def test_no_systemctl_or_useradd_with_root(staged: Path, wheel: Path) -> None:
    (staged / UNIT).unlink()  # a changed unit is what makes it reload systemd
    proc = run_install(staged, *offline_args(wheel))
    assert "--root: not run: systemctl daemon-reload" in proc.stdout
    assert "not run: useradd" not in proc.stdout  # the unit uses DynamicUser=
    assert "no system user needed (the unit uses DynamicUser=yes)" in proc.stdout


def test_installed_unit_verifies_clean(staged: Path, tmp_path: Path) -> None:
    """systemd-analyze verify prints nothing for the installed unit (its ExecStart mapped into the root)."""
    text = (staged / UNIT).read_text()
    exec_start = re.search(r"^ExecStart=(\S+)", text, re.M).group(1)
    assert (staged / exec_start.lstrip("/")).is_file()  # the unit names the staged venv's program
    unit = tmp_path / "edge-agent.service"
    unit.write_text(text.replace(f"ExecStart={exec_start}", f"ExecStart={staged}{exec_start}"))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


def test_prefix_moves_the_venv_and_execstart(tmp_path: Path, wheel: Path) -> None:
    root = tmp_path / "root"
    proc = run_install(root, *offline_args(wheel), "--prefix", "/srv/ea")
    assert proc.returncode == 0, proc.stderr
    assert (root / "srv/ea/venv/bin/edge-agent").is_file()
    assert not (root / "opt").exists()
    unit = (root / UNIT).read_text()
    assert "ExecStart=/srv/ea/venv/bin/edge-agent run /etc/edge-agent/config.yaml" in unit.splitlines()
    # everything but ExecStart is the shipped unit
    assert unit.replace("/srv/ea/venv", "/opt/edge-agent/venv") == SHIPPED_UNIT.read_text()


def test_uninstall_with_a_shared_prefix_removes_only_its_own(tmp_path: Path, wheel: Path) -> None:
    root = tmp_path / "root"
    other = root / "usr/local/bin/someone-elses-tool"
    other.parent.mkdir(parents=True)
    other.write_text("keep me")
    assert run_install(root, *offline_args(wheel), "--prefix", "/usr/local").returncode == 0
    assert (root / "usr/local/venv/bin/edge-agent").is_file()
    proc = run_install(root, "--prefix", "/usr/local", "--uninstall")
    assert proc.returncode == 0, proc.stderr
    assert other.read_text() == "keep me"
    assert sorted(p.name for p in (root / "usr/local").iterdir()) == ["bin"]


def test_second_run_changes_nothing(staged: Path, wheel: Path) -> None:
    before = tree(staged)
    venv_stamp = (staged / VENV / ".edge-agent-install").stat().st_mtime_ns
    proc = run_install(staged, *offline_args(wheel))
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do: edge-agent is installed as asked" in proc.stdout
    assert "pip install" not in proc.stdout
    assert tree(staged) == before
    assert (staged / VENV / ".edge-agent-install").stat().st_mtime_ns == venv_stamp


def test_edited_config_is_never_overwritten(staged: Path, wheel: Path) -> None:
    conf = staged / CONF
    edited = conf.read_text().replace("host: 127.0.0.1", "host: broker.lan")
    conf.write_text(edited)
    proc = run_install(staged, *offline_args(wheel))
    assert proc.returncode == 0, proc.stderr
    assert conf.read_text() == edited
    assert "edited by you: kept" in proc.stdout
    assert "nothing to do" in proc.stdout


def _checkout_copy(tmp_path: Path, template_text: str | None = None, unit_text: str | None = None) -> Path:
    """The files the installer takes from its checkout (with --wheel), with another template or unit."""
    copy = tmp_path / "checkout"
    for rel in (
        "scripts/install",
        "systemd/edge-agent.service",
        "README.md",
        "edge_agent/templates/config.yaml",
    ):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, copy / rel)
    if template_text is not None:
        (copy / "edge_agent/templates/config.yaml").write_text(template_text)
    if unit_text is not None:
        (copy / "systemd/edge-agent.service").write_text(unit_text)
    return copy


def test_new_template_replaces_an_unedited_config_only(tmp_path: Path, wheel: Path) -> None:
    root = tmp_path / "root"
    old = _checkout_copy(tmp_path / "old", TEMPLATE.read_text().replace("port: 1883", "port: 1884"))
    env = {**os.environ, "PIP_NO_INDEX": "1"}
    subprocess.run(["bash", str(old / "scripts/install"), "--root", str(root), *offline_args(wheel)],
                   check=True, capture_output=True, env=env)  # fmt: skip
    assert "port: 1884" in (root / CONF).read_text()
    proc = run_install(root, *offline_args(wheel))  # this checkout: the current template
    assert "update /etc/edge-agent/config.yaml to the new template (you had not edited it)" in proc.stdout
    assert (root / CONF).read_bytes() == TEMPLATE.read_bytes()


@pytest.mark.parametrize(
    ("nodes", "camera"),
    [
        ({"video0": "HD Pro Webcam C920", "video1": "HD Pro Webcam C920"}, True),
        # every Pi has these codec/ISP nodes; they are not cameras
        ({"video10": "bcm2835-codec-decode", "video12": "bcm2835-isp", "video19": "rpi-hevc-dec"}, False),
        ({}, False),
    ],
)
def test_camera_extra_when_a_camera_node_is_present(
    tmp_path: Path, wheel: Path, nodes: dict[str, str], camera: bool
) -> None:
    dev, sys_ = tmp_path / "dev", tmp_path / "sys"
    dev.mkdir()
    for node, name in nodes.items():
        (dev / node).write_text("")
        (sys_ / "class/video4linux" / node).mkdir(parents=True)
        (sys_ / "class/video4linux" / node / "name").write_text(name + "\n")
    env = {"EDGE_AGENT_DEV_ROOT": str(dev), "EDGE_AGENT_SYSFS_ROOT": str(sys_)}
    proc = run_install(tmp_path / "r", *offline_args(wheel), "--dry-run", env=env)
    assert proc.returncode == 0, proc.stderr
    assert ("would pip install edge-agent[device,camera]" in proc.stdout) is camera
    assert (f"camera extra: found {dev}/video0 {dev}/video1" in proc.stdout) is camera


def test_the_installer_skips_the_same_platform_nodes_as_probe() -> None:
    """The installer picks the camera extra before the package is installed, so it keeps its own list of
    the Pi's codec/ISP node names; probe and check must skip the same ones, or they disagree on cameras."""
    from edge_agent.commands.probe_report import PLATFORM_NODES

    body = INSTALL.read_text().split("camera_nodes() {", 1)[1].split("\n}\n", 1)[0]
    case = re.search(r'case "\$name" in ([^)]*)\) continue', body)
    assert case, "scripts/install: camera_nodes lost its case of platform node names"
    assert case.group(1).split("|") == list(PLATFORM_NODES)


def test_a_unit_with_a_fixed_user_gets_that_user(tmp_path: Path, wheel: Path) -> None:
    """DynamicUser= needs no account; a unit with User= does: useradd is printed (not run) with --root."""
    unit = SHIPPED_UNIT.read_text().replace("DynamicUser=yes", "User=edge-agent")
    copy = _checkout_copy(tmp_path, unit_text=unit)
    root = tmp_path / "root"
    env = {**os.environ, "PIP_NO_INDEX": "1"}
    cmd = ["bash", str(copy / "scripts/install"), "--root", str(root), *offline_args(wheel)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (
        "--root: not run: useradd --system --no-create-home --home-dir /var/lib/edge-agent "
        "--shell /usr/sbin/nologin --groups video,plugdev,dialout edge-agent" in proc.stdout
    )
    purge = subprocess.run([*cmd[:4], "--purge"], capture_output=True, text=True, env=env, timeout=300)
    assert "--root: not run: userdel edge-agent" in purge.stdout


def test_system_site_packages_follows_the_option(staged: Path, wheel: Path) -> None:
    cfg = staged / VENV / "pyvenv.cfg"
    assert "include-system-site-packages = false" in cfg.read_text().splitlines()
    proc = run_install(staged, *offline_args(wheel), "--system-site-packages")
    assert "set include-system-site-packages = true in /opt/edge-agent/venv/pyvenv.cfg" in proc.stdout
    assert "include-system-site-packages = true" in cfg.read_text().splitlines()
    proc = run_install(staged, *offline_args(wheel))
    assert "include-system-site-packages = false" in cfg.read_text().splitlines()


def test_dry_run_changes_nothing(tmp_path: Path, wheel: Path) -> None:
    root = tmp_path / "root"
    proc = run_install(root, *offline_args(wheel), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert not root.exists()
    for planned in (
        "would create venv /opt/edge-agent/venv",
        "would pip install edge-agent[device]",
        "would install /etc/systemd/system/edge-agent.service",
        "would install /etc/modules-load.d/edge-agent.conf",
        "would install /etc/edge-agent/config.yaml",
        "would create /var/lib/edge-agent/ (mode 750)",
    ):
        assert planned in proc.stdout  # fmt: skip
    assert "dry run: 10 change(s) planned, none made" in proc.stdout


def test_extras_follow_the_options(tmp_path: Path, wheel: Path) -> None:
    proc = run_install(tmp_path / "r", *offline_args(wheel), "--camera", "--serial", "--dry-run")
    assert "would pip install edge-agent[device,camera,serial]" in proc.stdout
    proc = run_install(tmp_path / "r", *offline_args(wheel), "--no-camera", "--dry-run")
    assert "would pip install edge-agent[device] " in proc.stdout


# ---------------------------------------------------------------------------------------------- uninstall


def test_uninstall_leaves_only_the_state_dir(staged: Path) -> None:
    model = staged / STATE / "models" / "door.tflite"
    model.write_bytes(b"model bytes")
    proc = run_install(staged, "--uninstall")
    assert proc.returncode == 0, proc.stderr
    assert sorted(tree(staged, skip_venv=False)) == [
        "var",
        "var/lib",
        STATE,
        f"{STATE}/models",
        f"{STATE}/models/door.tflite",
    ]
    assert model.read_bytes() == b"model bytes"
    assert "kept /var/lib/edge-agent" in proc.stdout
    again = run_install(staged, "--uninstall")
    assert again.returncode == 0 and "nothing to remove" in again.stdout


def test_uninstall_keeps_an_edited_config_and_purge_removes_all(staged: Path) -> None:
    (staged / CONF).write_text((staged / CONF).read_text() + "\ndevice_id: door\n")
    (staged / PASSWORD).write_text("s3cret\n")
    proc = run_install(staged, "--uninstall")
    assert proc.returncode == 0, proc.stderr
    assert "kept /etc/edge-agent/config.yaml: you edited it" in proc.stdout
    assert "kept /etc/edge-agent/mqtt-password: it holds a password" in proc.stdout
    assert (staged / CONF).exists() and (staged / PASSWORD).read_text() == "s3cret\n"
    assert not (staged / UNIT).exists() and not (staged / "opt").exists()
    proc = run_install(staged, "--purge")
    assert proc.returncode == 0, proc.stderr
    assert tree(staged, skip_venv=False) == {}


def test_purge_of_a_fresh_install_removes_everything(staged: Path) -> None:
    proc = run_install(staged, "--purge")
    assert proc.returncode == 0, proc.stderr
    assert tree(staged, skip_venv=False) == {}


def test_purge_after_the_service_ran_removes_the_private_state(staged: Path, wheel: Path) -> None:
    """With DynamicUser=, systemd moves the state to /var/lib/private/edge-agent and leaves a symlink."""
    state, private = staged / STATE, staged / "var/lib/private/edge-agent"
    private.parent.mkdir(mode=0o700)
    state.rename(private)
    state.symlink_to("private/edge-agent")
    (private / "outbox.sqlite").write_bytes(b"results")
    again = run_install(staged, *offline_args(wheel))  # the symlinked state dir counts as present
    assert "ok /var/lib/edge-agent/ (exists)" in again.stdout and "nothing to do" in again.stdout
    proc = run_install(staged, "--uninstall")
    assert proc.returncode == 0 and (state / "outbox.sqlite").read_bytes() == b"results"
    proc = run_install(staged, "--purge")
    assert proc.returncode == 0, proc.stderr
    assert "remove /var/lib/private/edge-agent/" in proc.stdout
    assert tree(staged, skip_venv=False) == {"var": ("dir", 0o755, None), "var/lib": ("dir", 0o755, None),
                                              "var/lib/private": ("dir", 0o700, None)}  # fmt: skip


def test_uninstall_dry_run_removes_nothing(staged: Path) -> None:
    before = tree(staged, skip_venv=False)
    proc = run_install(staged, "--uninstall", "--dry-run")
    assert proc.returncode == 0 and "would remove /etc/systemd/system/edge-agent.service" in proc.stdout
    assert tree(staged, skip_venv=False) == before


# ---------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown option '--bogus'"),
        (["--root"], "--root needs a value"),
        (["--python"], "--python needs a value"),
        (["--wheel", "/nonexistent/x.whl"], "--wheel /nonexistent/x.whl: no such file"),
        (["--prefix", "relative/dir"], "--prefix must be an absolute path"),
        (["--prefix", "/"], "--prefix / would put the venv at /venv"),
        (["--enable", "--uninstall"], "--enable and --uninstall/--purge exclude each other"),
    ],
)
def test_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.iterdir())


def _fake_uname(tmp_path: Path, machine: str) -> dict[str, str]:
    """This machine is x86_64; a stand-in ``uname`` reports another CPU (nothing else is faked)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "uname"
    fake.write_text(f'#!/bin/sh\n[ "$1" = -m ] && echo {machine} || exec /bin/uname "$@"\n')
    fake.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


@pytest.mark.parametrize("machine", ["armv7l", "armv6l"])
def test_refuses_32bit_arm(tmp_path: Path, wheel: Path, machine: str) -> None:
    proc = run_install(tmp_path / "r", *offline_args(wheel), env=_fake_uname(tmp_path, machine))
    assert proc.returncode == 3
    assert f"32-bit ARM ({machine}) is not supported" in proc.stderr and "64-bit OS" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_refuses_unknown_architecture(tmp_path: Path, wheel: Path) -> None:
    proc = run_install(tmp_path / "r", *offline_args(wheel), env=_fake_uname(tmp_path, "riscv64"))
    assert proc.returncode == 3 and "unsupported architecture 'riscv64'" in proc.stderr


def test_accepts_aarch64(tmp_path: Path, wheel: Path) -> None:
    proc = run_install(
        tmp_path / "r", *offline_args(wheel), "--dry-run", env=_fake_uname(tmp_path, "aarch64")
    )
    assert proc.returncode == 0 and "aarch64, Python" in proc.stdout


PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"


def _python(version: str) -> Path | None:
    found = sorted(PYENV.glob(f"{version}.*/bin/python{version}")) if PYENV.is_dir() else []
    path = shutil.which(f"python{version}")
    return found[-1] if found else (Path(path) if path else None)


@pytest.mark.parametrize("version", ["3.8", "3.9", "3.14"])
def test_refuses_unsupported_python(tmp_path: Path, wheel: Path, version: str) -> None:
    python = _python(version)
    if python is None:
        pytest.skip(f"no Python {version} on this machine")
    proc = run_install(tmp_path / "r", "--python", str(python), "--wheel", str(wheel), "--no-deps")
    assert proc.returncode == 4
    assert f"Python {version} ({python}) is not supported (edge-agent needs 3.10-3.13)" in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("version", ["3.10", "3.12", "3.13"])
def test_accepts_supported_python(tmp_path: Path, wheel: Path, version: str) -> None:
    python = _python(version)
    if python is None:
        pytest.skip(f"no Python {version} on this machine")
    proc = run_install(
        tmp_path / "r", "--python", str(python), "--wheel", str(wheel), "--no-deps", "--dry-run"
    )
    assert proc.returncode == 0, proc.stderr
    assert f"would create venv /opt/edge-agent/venv with {python} (Python {version})" in proc.stdout


def test_pip_failure_is_one_clear_error(tmp_path: Path) -> None:
    """No index and no wheel: pip cannot even get the build backend; the installer says what to do."""
    proc = run_install(tmp_path / "r", "--python", sys.executable, env={"PIP_FIND_LINKS": str(tmp_path)})
    assert proc.returncode == 5
    assert "install: error: pip could not install edge-agent[device]" in proc.stderr
    assert "PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR with --wheel FILE" in proc.stderr
    assert not (tmp_path / "r" / CONF).exists()  # it stopped before writing the rest


def test_refuses_a_missing_interpreter(tmp_path: Path, wheel: Path) -> None:
    proc = run_install(tmp_path / "r", "--python", "python3.99", "--wheel", str(wheel))
    assert proc.returncode == 4 and "Python interpreter 'python3.99' not found" in proc.stderr


def test_without_root_it_asks_for_root_privileges(tmp_path: Path, wheel: Path) -> None:
    if os.geteuid() == 0:
        env = {"PATH": os.environ["PATH"]}
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", str(INSTALL)],
            capture_output=True, text=True, timeout=60, env=env, cwd="/",
        )  # fmt: skip
    else:
        proc = run_install(None, *offline_args(wheel))
    assert proc.returncode == 1
    assert "run it as root (sudo" in proc.stderr and "or stage it with --root DIR" in proc.stderr


# ---------------------------------------------------------------------------------------------- the template


def _config_fields() -> set[str]:
    """Every key the daemon's config accepts anywhere in the tree."""
    import typing

    from pydantic import BaseModel

    from edge_agent.config import AgentConfig

    seen: set[type] = set()
    names: set[str] = set()

    def walk(annotation: object) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation in seen:
                return
            seen.add(annotation)
            for name, field in annotation.model_fields.items():
                names.add(field.alias or name)
                walk(field.annotation)
            return
        for arg in typing.get_args(annotation):
            walk(arg)

    walk(AgentConfig)
    return names


def test_template_is_valid_config() -> None:
    from edge_agent.config import load_config

    cfg = load_config(TEMPLATE)
    assert cfg.state_dir == Path("/var/lib/edge-agent")
    assert [str(p.model.path) for p in cfg.pipelines] == [TEMPLATE_MODEL]


def test_every_key_in_the_template_comments_is_a_config_key() -> None:
    """Commented-out examples must stay true to edge_agent/config.py: uncommenting one must not break."""
    fields = _config_fields()
    keys = set()
    for line in TEMPLATE.read_text().splitlines():
        m = re.match(r"^\s*#\s*(?:- )?([a-z_0-9]+):(\s|$)", line)
        if m:
            keys.add(m.group(1))
    keys |= set(re.findall(r"\{([a-z_]+):", TEMPLATE.read_text()))  # flow mappings: {top_k: 3}
    keys -= {"top_k"}  # postprocess options belong to the postprocessor, not to the config schema
    assert len(keys) > 40  # the walk found the commented keys
    assert keys <= fields, f"not config keys: {sorted(keys - fields)}"


def test_template_uncommented_example_blocks_validate(tmp_path: Path) -> None:
    """The sensor pipeline, TLS, outbox and watchdog examples, uncommented, are accepted by the config."""
    from edge_agent.config import load_config

    lines = TEMPLATE.read_text().splitlines()
    out = []
    exclusive = re.compile(r"\s*(password_file|password_env|labels_file|task|interval_s|edgetpu_device):")
    for line in lines:
        m = re.match(r"^(\s*)# ?(\s*(?:- )?[a-z_]+:(?:\s.*)?)$", line)
        # uncomment key lines, except alternatives that exclude each other or need files
        out.append(m.group(1) + m.group(2) if m and not exclusive.match(m.group(2)) else line)
    text = "\n".join(out)
    text = text.replace("policy: every", "policy: on_change")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    cfg = load_config(path)
    assert [p.name for p in cfg.pipelines] == ["camera", "vibration"]
    assert cfg.pipelines[1].source.type == "iio" and cfg.pipelines[1].window.size == 128
    assert cfg.mqtt.tls is not None and cfg.mqtt.password_credential == "mqtt-password"
    assert cfg.pipelines[0].evidence.enabled and cfg.pipelines[0].source.fps == 5


def test_template_passes_check_once_a_model_exists(tmp_path: Path, color_int8) -> None:
    """The installed template, with the model where it says (here: a tmp path), passes `edge-agent check`."""
    model = tmp_path / "models" / "model.tflite"
    model.parent.mkdir()
    shutil.copy(color_int8.path, model)
    manifest = json.loads(color_int8.manifest_path.read_text())
    manifest["model_file"] = model.name
    (model.parent / "model.json").write_text(json.dumps(manifest))
    config = tmp_path / "config.yaml"
    text = TEMPLATE.read_text()
    assert f"path: {TEMPLATE_MODEL}" in text
    config.write_text(text.replace(f"path: {TEMPLATE_MODEL}", f"path: {model}"))
    cli = [sys.executable, "-m", "edge_agent.cli", "check", str(config)]
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "models: OK" in proc.stdout
    missing = subprocess.run([*cli[:-1], str(TEMPLATE)], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 3 and TEMPLATE_MODEL in missing.stderr


# ---------------------------------------------------------------------------------------------- full install


def _index_problem(env: dict[str, str]) -> str | None:
    """Why pip cannot see the package index, or None if it can. Asks pip itself (``pip index versions``,
    with its own index URL, proxy, certificates and mirrors, as the install will use them), not a raw
    socket to pypi.org, which a mirror or proxy setup answers differently."""
    cmd = [sys.executable, "-m", "pip", "index", "versions", "ai-edge-litert", "--disable-pip-version-check"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        return "pip index versions ai-edge-litert did not answer in 120 s"
    if proc.returncode == 0 and "ai-edge-litert (" in proc.stdout:
        return None
    return f"pip index versions ai-edge-litert failed: {(proc.stderr or proc.stdout).strip()[-300:]}"


@pytest.fixture(scope="module")
def full_stage(tmp_path_factory: pytest.TempPathFactory, checkout: Path) -> Iterator[Path]:
    """The real thing: venv + dependencies from the package index (pip's cache makes reruns quick)."""
    env = {k: v for k, v in os.environ.items() if k != "PIP_NO_INDEX"}
    if (problem := _index_problem(env)) is not None:
        pytest.skip(f"the package index is not reachable through pip ({problem}): the full install needs it")
    root = tmp_path_factory.mktemp("full") / "root"
    cmd = ["bash", str(checkout / "scripts/install"), "--root", str(root), "--python", sys.executable]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"pip install edge-agent[device] into /opt/edge-agent/venv (from {checkout})" in proc.stdout
    assert "with ai-edge-litert" in proc.stdout
    yield root


def test_full_install_runs_edge_agent(full_stage: Path) -> None:
    exe = full_stage / VENV / "bin" / "edge-agent"
    assert subprocess.run(
        [str(exe), "--version"], capture_output=True, text=True, check=True
    ).stdout.startswith("edge-agent, version 0.1.0")
    check = subprocess.run(
        [str(exe), "check", "--no-models", str(full_stage / CONF)], capture_output=True, text=True
    )
    assert check.returncode == 3 and TEMPLATE_MODEL in check.stderr, check.stdout + check.stderr
    # the device venv has no TensorFlow, and no OpenCV unless a camera was there: then the template's camera
    # pipeline needs it, and check says so (the service would stop at its start with exit 7)
    pkgs = subprocess.run([str(full_stage / VENV / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
                          capture_output=True, text=True, check=True).stdout.lower()  # fmt: skip
    assert "ai-edge-litert==" in pkgs and "tensorflow" not in pkgs
    has_opencv = "opencv-python-headless==" in pkgs
    assert ("pip install 'edge-agent[camera]'" in check.stderr) == (not has_opencv), check.stderr
    assert ("OK: device" in check.stdout) == has_opencv
    litert = re.search(r"^ai-edge-litert==(\S+)$", pkgs, re.M).group(1)
    empty = full_stage / "empty"
    empty.mkdir(exist_ok=True)
    cmd = [str(exe), "probe", "--json", "--sysfs-root", str(empty), "--dev-root", str(empty)]
    probe = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd="/")
    assert probe.returncode == 0, probe.stderr
    runtimes = {r["name"]: r for r in json.loads(probe.stdout)["runtimes"]}
    assert runtimes["litert"] == {"name": "litert", "version": litert, "imports": True, "error": None}
    assert runtimes["tensorflow"]["version"] is None  # not in the device venv


def test_enable_refuses_without_a_model_then_enables(full_stage: Path, checkout: Path, color_int8) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PIP_NO_INDEX"}
    cmd = [
        "bash",
        str(checkout / "scripts/install"),
        "--root",
        str(full_stage),
        "--python",
        sys.executable,
        "--enable",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 6
    assert f"pipelines[0].model.path: {TEMPLATE_MODEL} is not in {full_stage}" in proc.stderr
    assert "--enable refused" in proc.stderr
    assert not (full_stage / WANTS).exists()

    models = full_stage / STATE / "models"
    shutil.copy(color_int8.path, models / "model.tflite")
    try:
        pkgs = subprocess.run([str(full_stage / VENV / "bin" / "python"), "-m", "pip", "list"],
                              capture_output=True, text=True, check=True).stdout.lower()  # fmt: skip
        if "opencv-python-headless" not in pkgs:  # no camera here; the template's camera pipeline needs it
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
            assert proc.returncode == 6 and "--enable refused" in proc.stderr, proc.stdout + proc.stderr
            assert "pipelines[0].source (camera): opencv-python-headless is not installed" in proc.stderr
            assert "run the installer again with --camera" in proc.stderr
            assert not (full_stage / WANTS).exists()
            cmd.append("--camera")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        link = full_stage / WANTS
        assert link.is_symlink() and os.readlink(link) == "/etc/systemd/system/edge-agent.service"
        assert "--root: not run: systemctl start edge-agent.service" in proc.stdout
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert again.returncode == 0 and "nothing to do" in again.stdout
    finally:
        (models / "model.tflite").unlink()
        (full_stage / WANTS).unlink(missing_ok=True)
