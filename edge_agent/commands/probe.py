"""``edge-agent probe``: what this device has, for writing its config.

Everything is read from /proc, /sys and /dev (each root can be moved, so a test or a support engineer can
point it at a copied tree), runtimes are found from package metadata (TensorFlow is only imported when
asked: it costs seconds and hundreds of MB), and the broker is tried with a real MQTT CONNECT.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edge_agent.commands.probe_broker import Broker, BrokerTarget, broker_target, check_broker
from edge_agent.commands.probe_device import (
    DEFAULT_CONFIG,
    DEV_ROOT_ENV,
    PROC_ROOT_ENV,
    SYSFS_ROOT_ENV,
    Roots,
    probe_board,
    probe_cameras,
    probe_edgetpu,
    probe_iio,
    probe_runtimes,
    probe_serial,
    probe_system,
)
from edge_agent.commands.probe_report import render, suggest_sources, to_json

__all__ = ["Broker", "BrokerTarget", "Roots", "broker_target", "check_broker", "command", "probe_board"]


@click.command(name="probe")
@click.option(
    "--config",
    "config",
    type=click.Path(path_type=Path, dir_okay=False),
    help=f"Config whose mqtt section is checked (default: {DEFAULT_CONFIG} when it exists).",
)
@click.option("--host", help="Broker host to check (overrides the config's).")
@click.option("--port", type=click.IntRange(1, 65535), help="Broker port (overrides the config's).")
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 60),
    default=3.0,
    show_default=True,
    help="Seconds to wait for the broker.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--no-open", is_flag=True, help="Do not open cameras (e.g. while the daemon uses them).")
@click.option("--import-tensorflow", is_flag=True, help="Also import TensorFlow to check it (slow).")
@click.option(
    "--sysfs-root",
    type=click.Path(path_type=Path, file_okay=False),
    default="/sys",
    envvar=SYSFS_ROOT_ENV,
    show_default=True,
    help="Where sysfs is mounted.",
)
@click.option(
    "--dev-root",
    type=click.Path(path_type=Path, file_okay=False),
    default="/dev",
    envvar=DEV_ROOT_ENV,
    show_default=True,
    help="Where device nodes are.",
)
@click.option(
    "--proc-root",
    type=click.Path(path_type=Path, file_okay=False),
    default="/proc",
    envvar=PROC_ROOT_ENV,
    show_default=True,
    help="Where procfs is mounted.",
)
def command(
    config: Path | None,
    host: str | None,
    port: int | None,
    timeout: float,
    as_json: bool,
    no_open: bool,
    import_tensorflow: bool,
    sysfs_root: Path,
    dev_root: Path,
    proc_root: Path,
) -> None:
    """List what this device has: cameras, IIO sensors, serial ports, runtimes, Edge TPU, CPU, broker."""
    if port is not None and host is None and config is None and not DEFAULT_CONFIG.is_file():
        raise click.UsageError("--port needs --host or --config")
    target = broker_target(config, host, port)
    roots = Roots(sysfs=sysfs_root, dev=dev_root, proc=proc_root)
    report: dict[str, Any] = {
        "system": probe_system(roots),
        "cameras": probe_cameras(roots, open_devices=not no_open),
        "iio": probe_iio(roots),
        "serial": probe_serial(roots),
        "runtimes": probe_runtimes(import_tensorflow),
        "edgetpu": probe_edgetpu(roots),
        "broker": check_broker(target, timeout) if target else None,
    }
    report["sources"] = suggest_sources(report, roots)
    if as_json:
        click.echo(json.dumps(to_json(report), indent=2))
    else:
        click.echo(render(report))
