"""``edge-agent``: the device command. Subcommands live in ``edge_agent.commands`` and load lazily,
so ``edge-agent check`` never pays for OpenCV or a runtime import it does not use."""

from __future__ import annotations

import importlib
import logging
import sys

import click

from edge_agent.errors import EdgeAgentError

# name -> module in edge_agent.commands that defines a click command called ``command``
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run", "Run the pipelines of a config file until stopped."),
    "check": ("check", "Validate a config file (and its models) without starting anything."),
    "bench": ("bench", "Benchmark a model: init, first inference, steady-state latency, RSS."),
    "inspect": ("inspect", "Show a model's tensors, manifest, and the runtime that will run it."),
    "probe": ("probe", "List what this device has: cameras, sensors, runtimes, broker."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module = importlib.import_module(f"edge_agent.commands.{COMMANDS[cmd_name][0]}")
        return module.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, help_) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edge-agent", prog_name="edge-agent")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """Run quantized TFLite models on this device and publish the results over MQTT."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_cli(group: click.Group, prog: str) -> None:
    """Run a click group, turning our own errors into one line and their exit code (no traceback)."""
    try:
        rv = group.main(prog_name=prog, standalone_mode=False)
    except EdgeAgentError as exc:
        click.echo(f"{prog}: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


def main() -> None:
    run_cli(cli, "edge-agent")


if __name__ == "__main__":
    main()
