"""``edge-agent run CONFIG``: run the pipelines of a config until stopped (SIGTERM/SIGINT) or, for finite
sources such as a video file, until every pipeline has ended and the outbox is drained."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from edge_agent.config import load_config
from edge_agent.errors import DependencyError


@click.command("run")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def command(ctx: click.Context, config: Path) -> int:
    """Run the pipelines of CONFIG until stopped.

    SIGTERM/SIGINT stop cleanly (pending results are sent for up to drain_timeout_s); SIGHUP reloads the
    config: models whose settings, file or manifest changed, publish settings and frame steps, pipelines
    added, removed or with a new source (the log names what needs a restart). With only finite sources (a
    video file without loop) it exits 0 once everything was processed and delivered. Validate a config
    first with `edge-agent check CONFIG`.
    """
    from edge_agent.commands.check import missing_packages
    from edge_agent.daemon import Daemon

    cfg = load_config(config)
    missing = missing_packages(cfg)
    if missing:  # all of them at once, with the keys that need them (the daemon would stop at the first)
        raise DependencyError("; ".join(missing))
    root = logging.getLogger()
    verbose = bool(ctx.parent and ctx.parent.params.get("verbose"))
    if not verbose:
        root.setLevel(cfg.log_level)
    daemon = Daemon(cfg, config_path=config)
    daemon.install_signal_handlers()
    return daemon.run()
