"""A site broker bridged to a central one, as the README documents it: two real mosquitto processes and the
real mosquitto bridge (no relay of ours). The daemon publishes to the site broker; the central broker is
stopped for 10 s and started again on the same port with its persistence while results keep flowing into
the site broker; a subscriber on the central broker still gets every seq, without a gap.

The bridge config is read from README.md (``tests/bridge_config.py``), so the documented file is the tested
one. The ``in`` direction (deployments and commands from the centre) is tested with real daemons in
``tests/test_fleet_daemons.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.bridge_config import bridge_to
from tests.daemon_harness import Agents, results, write_config
from tests.fixtures.broker import validate_payload
from tests.privacy import ImageCanary, canary_frame

FPS = 15
CUT_S = 10


def seqs(messages) -> list[int]:
    return [r["seq"] for r in results(messages, "cam")]


def test_site_broker_bridge_survives_a_10s_central_outage(
    tmp_path: Path, mosquitto, subscriber, privacy, color_int8, canary_video
) -> None:
    # persistent: the central broker keeps the bridge's and the subscriber's sessions across its restart
    central = mosquitto(persistent=True)
    central_sub = subscriber(central, "edge/testdev/#", client_id="central-sub", clean_session=False)
    site = mosquitto(persistent=True, extra_config=bridge_to(central.port))
    site_sub = subscriber(site, "edge/testdev/#")
    source = {"type": "camera", "url": str(canary_video), "loop": True, "fps": FPS}
    pipeline = {
        "name": "cam",
        "source": source,
        "model": {"path": str(color_int8.path)},
        "publish": {"qos": 1},
    }
    config = write_config(tmp_path / "config.yaml", site, [pipeline])
    watch = privacy(central, config, canary=ImageCanary([canary_frame()]))  # what reaches the centre
    with Agents(tmp_path) as agents:
        agent = agents.start(config)
        agent.expect(central_sub, lambda m: len(seqs(m)) >= FPS, timeout=40)

        central.stop(kill=False)  # the WAN cut: SIGTERM, mosquitto saves its sessions
        at_cut = len(seqs(site_sub.snapshot()))
        time.sleep(CUT_S)  # the outage itself (the scenario), not an assertion
        during = len(seqs(site_sub.snapshot())) - at_cut
        assert during >= FPS * CUT_S // 3, f"only {during} results reached the site broker during the cut"
        central.start()  # same port, its persistence; the bridge reconnects by itself

        sent = set(seqs(site_sub.snapshot()))
        agent.expect(central_sub, lambda m: sent <= set(seqs(m)), timeout=60)
        assert agent.stop() == 0, agent.log()
    last = max(seqs(site_sub.wait_for(lambda m: any(p == b"offline" for _, p, _ in m), timeout=10)))
    got = central_sub.wait_for(lambda m: last in set(seqs(m)), timeout=30)

    arrived = seqs(got)
    missing = set(range(1, last + 1)) - set(arrived)
    assert not missing, (
        f"{len(missing)} of {last} seqs never reached the central broker: {sorted(missing)[:20]}"
    )
    copies: dict[int, set[bytes]] = {}
    for topic, payload, _ in got:
        if topic.endswith("/result"):
            copies.setdefault(json.loads(payload)["seq"], set()).add(payload)
    assert all(len(c) == 1 for c in copies.values()), "a copy sent again after the cut differs"
    for obj in results(got)[:50]:
        validate_payload(obj, "result")
    # the bridge really was cut and came back by itself (connected at start, then again after the cut)
    assert site.log_tail(10_000).count("Connecting bridge (step 2) central") >= 2, site.log_tail()
    watch.check()
