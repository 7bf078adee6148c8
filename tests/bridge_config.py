"""The README's site-broker bridge config ("A site broker bridged to a central one"), read from the README so
the documented file is the tested one; only ``address`` (the test's central broker) and ``restart_timeout``
(1-2 s instead of 2-30 s, to keep tests short) are changed."""

from __future__ import annotations

import re

from tests.daemon_harness import REPO

README_SECTION = "## A site broker bridged to a central one"


def readme_bridge_config() -> list[str]:
    """The ``conf`` block of the README's bridge section, without comments and blank lines."""
    text = (REPO / "README.md").read_text()
    section = text.split(README_SECTION, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```conf\n(.*?)```", section, re.S)
    assert block is not None, "the README's bridge section has no ```conf block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def bridge_to(central_port: int) -> tuple[str, ...]:
    """mosquitto.conf lines for a site broker bridged to the central broker on ``central_port``."""
    lines = readme_bridge_config()
    replace = {"address": f"address 127.0.0.1:{central_port}", "restart_timeout": "restart_timeout 1 2"}
    assert {line.split()[0] for line in lines} >= set(replace), lines
    return tuple(replace.get(line.split()[0], line) for line in lines)
