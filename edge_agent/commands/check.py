"""``edge-agent check CONFIG``: validate a config (and load its models) without starting anything.

Exit 0 when everything is fine, 2 for config problems (every one listed with its key path and value),
3 when a model cannot be loaded or does not match its manifest, 7 when only an optional package the config
needs is missing (OpenCV for a camera, pyserial, prometheus-client, cryptography for trusted keys).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from edge_agent.commands.probe_device import DEFAULT_UNIT
from edge_agent.config import AgentConfig, PipelineConfig, load_config
from edge_agent.errors import ConfigError, DependencyError, ModelError, SourceError
from edge_agent.extras import OPENCV, PROMETHEUS, PYSERIAL, Extra
from edge_agent.publish.client import resolve_password, tls_file_problems
from edge_agent.sources.camera import CameraSourceConfig, camera_kind
from edge_agent.sources.device_access import access_problem
from edge_agent.sources.stream_login import shown_url
from edge_agent.storage_room import storage_notes


def _source_summary(p: PipelineConfig) -> str:
    s = p.source
    if isinstance(s, CameraSourceConfig):
        return f"camera {shown_url(s.url)}" + (f" @{s.fps:g} fps" if s.fps else "")
    if s.type == "iio":
        return f"iio {s.device} {','.join(s.channels)} @{s.rate_hz:g} Hz"
    if s.type == "serial":
        return f"serial {s.port}"
    if s.type == "command":
        return f"command {' '.join(s.argv)}"
    return f"file {s.path}"


# Sources whose start refuses what no retry fixes (a video or sample file, a program, an IIO device or
# channel that is not there); a serial port may come later (the source retries), and a camera device or a
# stream is retried too (their preflight passes).
PREFLIGHT_SOURCES = ("camera", "file", "command", "iio")


def environment_problems(cfg: AgentConfig) -> list[str]:
    """Files, programs and devices the config names that are not there, by the checks the start makes (no
    device is opened, nothing is started)."""
    from edge_agent.sources import create_source

    problems: list[str] = []
    try:  # outside the service, a credential is read from the file its unit's LoadCredential= names
        resolve_password(cfg.mqtt, unit=DEFAULT_UNIT)
    except ConfigError as exc:
        problems.append(str(exc))
    problems += tls_file_problems(cfg.mqtt.tls)
    for i, p in enumerate(cfg.pipelines):
        s = p.source
        if isinstance(s, CameraSourceConfig):
            try:  # a stream's password, read as the service will (the unit's LoadCredential=)
                s.url_with_password(f"pipelines[{i}].source", unit=DEFAULT_UNIT)
            except ConfigError as exc:
                problems.append(str(exc))
        if s.type not in PREFLIGHT_SOURCES:
            continue
        try:
            create_source(s, p.window).preflight()
        except SourceError as exc:
            problems.append(f"pipelines[{i}].source: {exc}")
        except DependencyError:  # no OpenCV (missing_packages names it): only whether a video file is there
            if camera_kind(s.url) == "file" and not Path(str(s.url)).is_file():
                problems.append(f"pipelines[{i}].source: camera url: video file {s.url} does not exist")
    return problems


def environment_notes(cfg: AgentConfig) -> list[str]:
    """What is not a problem now but may be one: a camera device not plugged in (yet), which the pipeline
    waits for; a camera named by a node number that another camera may take at the next boot; a camera or
    serial port this user may not open (the service, as another user with its own groups, may); a state_dir
    whose file system cannot hold the outbox and evidence the config allows; evidence frames no pipeline
    keeps any more."""
    cameras = [(i, p.source) for i, p in enumerate(cfg.pipelines) if isinstance(p.source, CameraSourceConfig)]
    notes = [
        f"pipelines[{i}].source: camera device {path} is not there now: the pipeline waits for it (is the "
        "camera plugged in? ls /dev/video*, edge-agent probe)"
        for i, source in cameras
        if (path := source.missing_device())
    ]
    return notes + _unsteady_camera_names(cameras) + _devices_denied(cfg) + storage_notes(cfg)


def _devices_denied(cfg: AgentConfig) -> list[str]:
    """Permission bits only: check opens no device (a serial port's DTR line would reset the board on it)."""
    notes = []
    for i, p in enumerate(cfg.pipelines):
        s = p.source
        path = s.device_path if isinstance(s, CameraSourceConfig) else s.port if s.type == "serial" else None
        if path and (why := access_problem(path)):
            notes.append(f"pipelines[{i}].source: {why}")
    return notes


def _unsteady_camera_names(cameras: list[tuple[int, CameraSourceConfig]]) -> list[str]:
    """With two USB cameras, /dev/video0 is whichever the kernel found first: name each by udev's link."""
    named = [(i, path) for i, source in cameras if (path := source.device_path) and not os.path.islink(path)]
    if not named:
        return []
    # here, not at the top: `edge-agent run` imports this module, and the daemon need not carry probe's
    from edge_agent.commands.probe_device import Roots, probe_cameras
    from edge_agent.commands.probe_report import capture_nodes, steadiest_name

    roots = Roots.from_environment()  # as probe and the installer see them (moved by a test)
    capture = capture_nodes(probe_cameras(roots, open_devices=False))
    if len(capture) < 2:
        return []
    by_node = {os.path.realpath(c.device): c for c in capture}
    notes = []
    for i, path in named:
        cam = by_node.get(os.path.realpath(path))
        if cam and (stable := steadiest_name(cam, capture, roots)) != cam.device:
            notes.append(
                f"pipelines[{i}].source.url: {path} is one of {len(capture)} cameras here, and their numbers "
                f"may swap at the next boot: name it {stable} (edge-agent probe lists them)"
            )
    return notes


def needed_extras(cfg: AgentConfig) -> dict[Extra, list[str]]:
    """The optional packages the daemon imports for this config -> the keys that need each."""
    needs: dict[Extra, list[str]] = {}
    for i, p in enumerate(cfg.pipelines):
        if isinstance(p.source, CameraSourceConfig):
            needs.setdefault(OPENCV, []).append(f"pipelines[{i}].source (camera)")
        elif p.source.type == "serial":
            needs.setdefault(PYSERIAL, []).append(f"pipelines[{i}].source (serial)")
    if cfg.metrics is not None:
        needs.setdefault(PROMETHEUS, []).append("metrics")
    return needs


def missing_packages(cfg: AgentConfig) -> list[str]:
    """Each optional package this config needs that cannot be imported here (``edge-agent run`` would stop
    at its start with exit 7), with the keys that need it and the extra to install."""
    problems: list[str] = []
    for extra, keys in needed_extras(cfg).items():
        try:
            extra.load()
        except DependencyError as exc:
            problems.append(f"{', '.join(keys)}: {exc}")
    return problems


def fleet_summary(cfg: AgentConfig) -> str:
    """Whether remote deployment is on, as the daemon will log it. The keys are read as the daemon reads them
    at its start, enabled or not: a bad key file raises ConfigError, cryptography missing DependencyError."""
    from edge_agent.fleet.signing import load_trusted_keys, remote_deploy_status

    fleet = cfg.fleet
    keys = load_trusted_keys(fleet.trusted_keys_dir)
    _, why = remote_deploy_status(fleet.enabled, keys, fleet.trusted_keys_dir)
    groups = f"; groups: {', '.join(fleet.groups)}" if fleet.groups else ""
    return why + groups


def missing_model_files(cfg: AgentConfig) -> list[str]:
    """What ``--no-models`` checks of the models: that each file is there."""
    return [
        f"pipelines[{i}].model.path: {p.model.path} does not exist"
        for i, p in enumerate(cfg.pipelines)
        if not p.model.path.is_file()
    ]


def check_models(cfg: AgentConfig) -> tuple[list[str], list[str]]:
    """Load every model the way the daemon will (``ModelLoader``: sha256, tensors, fit to the source and
    its window); returns (summary lines, problems)."""
    from edge_agent.model_loader import ModelLoader

    loader = ModelLoader()
    lines: list[str] = []
    problems: list[str] = []
    for i, p in enumerate(cfg.pipelines):
        try:
            model = loader.load(p).model
        except (ModelError, DependencyError, ConfigError) as exc:
            problems.append(f"pipelines[{i}].model ({p.model.path}): {exc}")
            continue
        try:
            m = model.manifest
            if p.zones is not None and m.task != "detection":
                problems.append(
                    f"pipelines[{i}].zones: zones place detections, but model {m.name} is a {m.task} model; "
                    "remove zones or use a detection model"
                )
            delegate = model.delegate or "cpu"
            fallback = f" (delegate fell back: {model.delegate_error})" if model.delegate_error else ""
            lines.append(
                f"  {p.name}: model {m.name} ({m.task}, {m.mode or 'unknown mode'}) "
                f"sha256 {model.sha256[:12]} "
                f"input {model.input.shape} {model.input.dtype} on {model.backend}/{delegate}{fallback}"
            )
        finally:
            model.close()
    return lines, problems


def _list(title: str, lines: list[str]) -> None:
    if lines:
        listing = "\n".join(f"  {line}" for line in lines)
        click.echo(f"{title}:\n{listing}", err=True)


@click.command("check")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option(
    "--models/--no-models", default=True, show_default=True, help="Also load each model and check it."
)
@click.option("--schema", is_flag=True, help="Print the config's JSON Schema (for editors) and exit.")
def command(config: Path | None, models: bool, schema: bool) -> None:
    """Validate CONFIG and, with --models, load each model and check it against its manifest."""
    if schema:
        click.echo(json.dumps(AgentConfig.model_json_schema(), indent=2))
        return
    if config is None:
        raise click.UsageError("give the CONFIG file to check (or --schema)")
    cfg = load_config(config)
    problems = environment_problems(cfg)
    notes = environment_notes(cfg)
    missing = missing_packages(cfg)
    fleet = ""
    try:
        fleet = fleet_summary(cfg)
    except ConfigError as exc:  # a file in the trusted keys folder that is not a key
        problems.append(str(exc))
    except DependencyError as exc:  # keys to read, and no cryptography to read them
        missing.append(f"fleet.trusted_keys_dir: {exc}")
    if problems or missing:  # the models are still checked: one run of `check` shows every problem there is
        _list(f"{config}: {len(problems)} config problem(s)", problems)
        _list(f"{config}: {len(missing)} missing package(s)", missing)
        _list(f"{len(notes)} note(s)", notes)
        _, model_problems = check_models(cfg) if models else ([], missing_model_files(cfg))
        _list(f"{len(model_problems)} model problem(s)", model_problems)
        counts = [
            f"{len(found)} {what}"
            for found, what in (
                (problems, "config problem(s)"),
                (missing, "missing package(s)"),
                (model_problems, "model problem(s)"),
            )
            if found
        ]
        error = ConfigError if problems else ModelError if model_problems else DependencyError
        raise error(f"{config}: {' and '.join(counts)}, listed above")
    click.echo(
        f"{config}: OK: device '{cfg.device_id}', broker {cfg.mqtt.host}:{cfg.mqtt.port}, "
        f"state in {cfg.state_dir}, {len(cfg.pipelines)} pipeline(s)"
    )
    click.echo(f"  fleet: {fleet}")
    click.echo(f"  metrics: {cfg.metrics.url if cfg.metrics is not None else 'off'}")
    for p in cfg.pipelines:
        click.echo(
            f"  {p.name}: {_source_summary(p)} -> {p.model.path.name} -> {cfg.result_topic(p)} "
            f"(qos {p.publish.qos}, {p.publish.policy})"
        )
    _list(f"{len(notes)} note(s)", notes)
    if not models:
        absent = missing_model_files(cfg)
        if absent:
            raise ModelError(f"{len(absent)} model problem(s):\n" + "\n".join(f"  {line}" for line in absent))
        return
    lines, model_problems = check_models(cfg)
    for line in lines:
        click.echo(line)
    if model_problems:
        listing = "\n".join(f"  {line}" for line in model_problems)
        raise ModelError(f"{len(model_problems)} model problem(s):\n{listing}")
    click.echo("models: OK")
