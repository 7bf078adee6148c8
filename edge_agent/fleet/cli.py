"""``edge-fleet``: the operator's command for a fleet: keygen, deploy (with canary), status, rollback, gc.

Needs paho-mqtt and cryptography (``pip install 'edge-agent[fleet]'``), never TensorFlow or a runtime.
Retained models no deployment refers to are cleared at the end of every successful ``deploy`` and by
``edge-fleet gc``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from edge_agent import __version__
from edge_agent.cli import run_cli
from edge_agent.errors import ConfigError, EdgeAgentError

Connect = Callable[[], contextlib.AbstractContextManager[Any]]
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


class FleetFailure(EdgeAgentError):
    """A device refused or rolled back a deployment, or did not answer in time."""

    exit_code = 10


def parse_duration(text: str, option: str) -> float:
    m = _DURATION.match(text)
    if not m:
        raise ConfigError(f"{option}: {text!r} is not a duration; write e.g. 60s, 5m or 1h")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2) or "s"]


def broker_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--broker, --username, --password-file, --tls-* and --prefix, checked at once and handed to the command
    as ``connect()``: each command checks its own options before it connects, so a typo is one line and
    never a half-done deployment on the broker (a model retained that no deployment refers to)."""

    @click.option("--broker", default="127.0.0.1:1883", show_default=True, help="HOST:PORT of the broker.")
    @click.option(
        "--username", default=None, help="Broker user (the operator's, allowed to write deploy topics)."
    )
    @click.option(
        "--password-file", type=click.Path(path_type=Path), default=None, help="First line: password."
    )
    @click.option("--tls-ca", type=click.Path(path_type=Path), default=None, help="CA file; turns TLS on.")
    @click.option("--tls-cert", type=click.Path(path_type=Path), default=None, help="Client certificate.")
    @click.option("--tls-key", type=click.Path(path_type=Path), default=None, help="Client key.")
    @click.option("--tls-insecure", is_flag=True, help="Skip the host name check (lab brokers only).")
    @click.option("--prefix", default="edge", show_default=True, help="Topic prefix (mqtt.topic_prefix).")
    @functools.wraps(fn)
    def wrapper(**kw: Any) -> Any:
        from edge_agent.fleet.broker import BrokerOptions, FleetClient
        from edge_agent.publish.config import topic_prefix_problem

        host, _, port = kw.pop("broker").rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError("--broker: write HOST:PORT with a port from 1 to 65535, e.g. 127.0.0.1:1883")
        if problem := topic_prefix_problem(kw["prefix"]):
            raise ConfigError(f"--prefix {kw['prefix']!r}: {problem} (it is the devices' mqtt.topic_prefix)")
        password = None
        pw_file = kw.pop("password_file")
        if pw_file is not None:
            try:
                password = (pw_file.read_text().splitlines() or [""])[0].strip()
            except OSError as exc:
                raise ConfigError(f"--password-file: cannot read {pw_file}: {exc.strerror}") from None
        opts = BrokerOptions(host=host, port=int(port), username=kw.pop("username"), password=password,
                             tls_ca=kw.pop("tls_ca"), tls_cert=kw.pop("tls_cert"), tls_key=kw.pop("tls_key"),
                             tls_insecure=kw.pop("tls_insecure"))  # fmt: skip

        @contextlib.contextmanager
        def connect() -> Iterator[FleetClient]:
            client = FleetClient(opts).connect()
            try:
                yield client
            finally:
                client.close()

        return fn(connect=connect, **kw)

    return wrapper


def _check_name(option: str, value: str) -> str:
    """A device, group or pipeline name as the devices' config allows it (it becomes a topic level)."""
    from edge_agent.fleet.messages import NAME_PATTERN

    if not re.match(NAME_PATTERN, value):
        raise ConfigError(
            f"{option} {value!r}: use letters, digits, '_', '-' and '.' (starting with a letter or digit, "
            "at most 64), as in the devices' config"
        )
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-fleet")
def cli() -> None:
    """Deliver models to a fleet of edge-agent devices over their MQTT broker, signed."""


@cli.command()
@click.argument("keydir", type=click.Path(path_type=Path))
def keygen(keydir: Path) -> None:
    """Make an Ed25519 signing key pair in KEYDIR (fleet.key 0600, fleet.pub); never overwrites."""
    from edge_agent.fleet.signing import generate_keypair

    private, public, kid = generate_keypair(keydir)
    click.echo(f"private key: {private} (keep it secret)\npublic key:  {public} (key id {kid})")
    click.echo("copy the public key to each device's /etc/edge-agent/trusted-keys/")


def _target(device: tuple[str, ...], group: str | None) -> list[tuple[str, str]]:
    if bool(device) == bool(group):
        raise ConfigError("give either --device ID (one or more) or --group NAME")
    if device:
        return [("device", _check_name("--device", d)) for d in device]
    return [("group", _check_name("--group", group))]  # type: ignore[arg-type]


def _signing_key(path: Path) -> Any:
    """The operator's private key; a key others can read is said (as ssh does), not refused."""
    from edge_agent.fleet.signing import load_private_key

    key = load_private_key(path)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        click.echo(f"edge-fleet: warning: --key {path} can be read by other users (mode {mode:o}); "
                   f"chmod 600 {path}", err=True)  # fmt: skip
    return key


def _check_url(url: str | None) -> None:
    from edge_agent.fleet.messages import HTTP_URL_MAX, HTTP_URL_PATTERN

    if url is not None and (len(url) > HTTP_URL_MAX or not re.match(HTTP_URL_PATTERN, url)):
        raise ConfigError(f"--url {url[:80]!r}: give an http:// or https:// URL without spaces "
                          f"(at most {HTTP_URL_MAX} characters)")  # fmt: skip


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--pipeline", required=True, help="Pipeline name on the devices.")
@click.option("--device", multiple=True, help="Target device id (repeatable).")
@click.option("--group", default=None, help="Target group (fleet.groups in the devices' config).")
@click.option(
    "--key", required=True, type=click.Path(path_type=Path), help="Private key (edge-fleet keygen)."
)
@click.option(
    "--canary", type=click.IntRange(min=0), default=0, help="With --group: deploy to N devices first."
)
@click.option("--healthy-for", default="60s", show_default=True, help="Watch period after each swap.")
@click.option(
    "--timeout",
    "timeout_",
    default="15m",
    show_default=True,
    help="Give up on a device that has not reported the swap by then (--healthy-for comes on top).",
)
@click.option("--url", default=None, help="Devices fetch the model from this http(s) URL instead of MQTT.")
@broker_options
def deploy(connect: Connect, model: Path, pipeline: str, device: tuple[str, ...], group: str | None,
           key: Path, canary: int, healthy_for: str, timeout_: str, url: str | None,
           prefix: str) -> None:  # fmt: skip
    """Sign MODEL (with the manifest beside it) and deploy it; follow every device until done."""
    from edge_agent.fleet import deploy as d
    from edge_agent.fleet.messages import MAX_HEALTHY_FOR_S
    from edge_agent.fleet.topics import model_topic

    targets = _target(device, group)
    _check_name("--pipeline", pipeline)
    if canary and not group:
        raise ConfigError("--canary needs --group")
    watch_s, timeout = parse_duration(healthy_for, "--healthy-for"), parse_duration(timeout_, "--timeout")
    if watch_s > MAX_HEALTHY_FOR_S:
        raise ConfigError(f"--healthy-for {healthy_for}: at most {MAX_HEALTHY_FOR_S // 3600}h")
    _check_url(url)
    files = d.read_model(model)
    signing_key = _signing_key(key)
    with connect() as client:
        view = d.start_view(client, prefix)
        canaries = _canaries(view, group, canary) if canary else []  # before anything is published
        if url is None:
            client.publish(model_topic(prefix, files.sha256), files.data, retain=True)
            click.echo(
                f"model {files.manifest.get('name')} {files.sha256[:12]} ({len(files.data)} bytes) published"
            )
        wait = timeout + watch_s

        def send(kind: str, name: str) -> int:
            number = d.next_number(key)
            dep = d.build_deployment(files, number=number, target=(kind, name), pipeline=pipeline,
                                     key=signing_key, prefix=prefix, healthy_for_s=watch_s,
                                     url=url)  # fmt: skip
            client.publish(d.target_topic(prefix, kind, name), d.encode(dep), retain=True)
            click.echo(f"deployment {number} -> {kind} {name}")
            return number

        failed: dict[str, str] = {}
        if canaries:
            numbers = {c: send("device", c) for c in canaries}
            for c in canaries:
                out = d.follow(view, [c], numbers[c], timeout=wait, done_state="active", echo=click.echo,
                               wait_offline=True)  # fmt: skip
                failed |= out.failed | _unanswered(view, out.pending)
            if failed:
                for c in canaries:
                    client.publish(d.target_topic(prefix, "device", c), b"", retain=True)
                raise FleetFailure(f"canary failed, not deploying to group {group!r}: " + _describe(failed))
        for kind, name in targets:
            number = send(kind, name)
            devices = _followed(view, kind, name)
            out = d.follow(view, devices, number, timeout=wait, done_state="active", echo=click.echo)
            failed |= out.failed | _unanswered(view, out.pending)
        for c in canaries:  # the group deployment covers them now
            client.publish(d.target_topic(prefix, "device", c), b"", retain=True)
        if failed:
            raise FleetFailure("deployment failed on " + _describe(failed))
        cleared = d.clear_unreferenced_models(client, prefix, frozenset({files.sha256}))
    click.echo(f"done; cleared {len(cleared)} unreferenced retained model(s)")


def _canaries(view: Any, group: str | None, count: int) -> list[str]:
    views = view.snapshot()
    online = [m for m in view.members(group) if views[m].online is not False]
    if len(online) < count:
        raise FleetFailure(f"--canary {count}: group {group!r} has {len(online)} online device(s) ({online})")
    return online[:count]


def _followed(view: Any, kind: str, name: str) -> list[str]:
    """The devices to follow for a target, saying when none or an unknown one is there (a typo in an id
    would otherwise be a silent wait until --timeout)."""
    if kind == "group":
        members = view.members(name)
        if not members:
            click.echo(f"  no device of group {name!r} has reported yet: they apply it when they connect")
        return members
    if name not in view.snapshot():
        click.echo(
            f"  {name:<20} never seen on this broker: waiting for it (is the id right, and fleet on there?)"
        )
    return [name]


def _unanswered(view: Any, pending: list[str]) -> dict[str, str]:
    offline = {d for d, v in view.snapshot().items() if v.online is False}
    return {
        d: "offline, and no answer before --timeout" if d in offline else "no answer before --timeout"
        for d in pending
    }


def _describe(failed: dict[str, str]) -> str:
    return "; ".join(f"{dev}: {why}" for dev, why in sorted(failed.items()))


@cli.command()
@click.option("--group", default=None, help="Only devices of this group.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@broker_options
def status(connect: Connect, group: str | None, as_json: bool, prefix: str) -> None:
    """Every device seen on the broker: online, groups, each pipeline's model and the last deploy state."""
    from edge_agent.fleet.deploy import start_view
    from edge_agent.fleet.view import render_table

    with connect() as client:
        views = list(start_view(client, prefix).snapshot().values())
    if group:
        views = [v for v in views if group in v.groups]
    if as_json:
        click.echo(json.dumps([v.as_dict() for v in sorted(views, key=lambda v: v.device)], indent=1))
    else:
        click.echo(render_table(views) if views else "no devices seen on the broker")


@cli.command()
@click.option("--pipeline", required=True)
@click.option("--device", multiple=True, help="Target device id (repeatable).")
@click.option("--group", default=None)
@click.option("--key", required=True, type=click.Path(path_type=Path))
@click.option("--timeout", "timeout_", default="2m", show_default=True)
@broker_options
def rollback(connect: Connect, pipeline: str, device: tuple[str, ...], group: str | None, key: Path,
             timeout_: str, prefix: str) -> None:  # fmt: skip
    """Send a signed command back to the previous model; follow the devices until done."""
    from edge_agent.fleet import deploy as d

    targets = _target(device, group)
    _check_name("--pipeline", pipeline)
    timeout = parse_duration(timeout_, "--timeout")
    signing_key = _signing_key(key)
    failed: dict[str, str] = {}
    with connect() as client:
        view = d.start_view(client, prefix)
        for kind, name in targets:
            number = d.next_number(key)
            cmd = d.build_rollback(number=number, target=(kind, name), pipeline=pipeline, key=signing_key)
            client.publish(d.target_topic(prefix, kind, name, command=True), d.encode(cmd), retain=True)
            click.echo(f"rollback {number} -> {kind} {name}")
            devices = _followed(view, kind, name)
            out = d.follow(view, devices, number, timeout=timeout, done_state="rolled_back", echo=click.echo)
            failed |= out.failed | _unanswered(view, out.pending)
    if failed:
        raise FleetFailure("rollback failed on " + _describe(failed))


@cli.command()
@broker_options
def gc(connect: Connect, prefix: str) -> None:
    """Clear retained models that no retained deployment refers to."""
    from edge_agent.fleet.deploy import clear_unreferenced_models

    with connect() as client:
        cleared = clear_unreferenced_models(client, prefix)
    click.echo("\n".join([*cleared, f"cleared {len(cleared)} retained model(s)"]))


def main() -> None:
    run_cli(cli, "edge-fleet")


if __name__ == "__main__":
    main()
