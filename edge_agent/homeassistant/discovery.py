"""Announce the device's entities to Home Assistant, and take back the ones that no longer exist.

When: after every (re)connect (an on-connect listener: the broker may have lost its retained messages), when
Home Assistant says ``online`` on ``<prefix>/status`` (its birth message: it restarted and may have lost
its entities) and after a reload (``announce()``). Each entity's config is published retained, QoS 1.

Taking back: the daemon subscribes to its own node's discovery topics (``<prefix>/+/<node>/+/config``), so
the broker tells it, at every connect, which configs it announced before (in an earlier run, with another
config). Any config there that is not in the current set gets an empty retained message, which removes the
entity in Home Assistant: a pipeline that left the config, a detection class no longer chosen.

Inbound is bounded like every other subscription (``MqttConnection.subscribe``): the birth message to 64
bytes, a config to 16 KiB; their content is never used beyond "is it ``online``" and "is it empty". Births
are coalesced: the first one schedules an announcement ``BIRTH_COALESCE_S`` later, and the births before it
goes out share it, so a flood of ``online`` (a client that repeats it, anyone who can write the topic) costs
at most one announcement a second instead of one per message (2,000 births made 18,000 retained configs).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from edge_agent.homeassistant.config import HomeAssistantConfig
from edge_agent.homeassistant.entities import EntityBuilder, PipelineView
from edge_agent.publish.connection import InboundMessage, MqttConnection

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig
    from edge_agent.publish.mqtt import MqttPublisher

log = logging.getLogger(__name__)

BIRTH_MAX_BYTES = 64
CONFIG_MAX_BYTES = 16 * 1024  # ours are ~1 KB; anything far larger under our node is not ours to read
SWAP_WAIT_S = 30.0  # a reload announces once the new models run (or after this long)
BIRTH_COALESCE_S = 1.0  # births within this long of the first one get one announcement


class Discovery:
    """Owns the set of announced discovery topics of one device on one connection."""

    def __init__(
        self,
        cfg: HomeAssistantConfig,
        device_id: str,
        connection: MqttConnection,
        *,
        status_topic: str,
        stats_topic: str,
        pipelines: Callable[[], Iterable[PipelineView]],
    ) -> None:
        self.cfg = cfg
        self.connection = connection
        self.builder = EntityBuilder(cfg, device_id, status_topic, stats_topic)
        self.pipelines = pipelines
        self.birth_topic = f"{cfg.prefix}/status"
        self.own_configs = f"{cfg.prefix}/+/{self.builder.node}/+/config"
        self._lock = threading.Lock()
        self._current: dict[str, bytes] = {}  # topic -> payload of the set last announced
        self._retained: set[str] = set()  # our node's non-empty configs the broker holds, as far as we saw
        self._announced = False  # before the first announcement nothing is stale: the set is not known yet
        self.configured: set[str] | None = None  # pipelines in the config file (None: every running one)
        self.announcements = 0
        self._birth_pending = False  # an announcement for a birth is scheduled
        self._births_coalesced = 0  # births served by the announcement already scheduled

    def start(self) -> None:
        """Subscribe and announce (now if connected, else at connect). Call once the pipelines exist: an
        announcement with none would take back every pipeline's entities."""
        self.connection.subscribe(self.birth_topic, self._on_birth, qos=1, max_bytes=BIRTH_MAX_BYTES)
        self.connection.subscribe(self.own_configs, self._on_own_config, qos=1, max_bytes=CONFIG_MAX_BYTES)
        self.connection.add_on_connect(lambda _conn: self.announce())
        log.info("Home Assistant discovery on (prefix %s, node %s)", self.cfg.prefix, self.builder.node)

    def announce(self) -> int:
        """Publish every entity's config (retained) and empty the stale ones; the number of configs sent."""
        views = [v for v in self.pipelines() if self.configured is None or v.name in self.configured]
        entities = self.builder.entities(views)
        current = {e.topic(self.cfg.prefix, self.builder.node): e.payload() for e in entities}
        with self._lock:
            self._current = current
            self._announced = True
            stale = self._retained - current.keys()
        sent = sum(self.connection.publish(t, p, qos=1, retain=True) for t, p in current.items())
        for topic in stale:
            self._take_back(topic)
        if sent:
            self.announcements += 1
            log.info("Home Assistant: announced %d entities", sent)
        return sent

    def reload(self, new: AgentConfig, swaps: Iterable[threading.Event]) -> None:
        """A reload's new settings (classes, off delay) and pipelines, then an announcement once its model
        swaps happened. A pipeline removed from the file loses its entities now (the daemon stops it), an
        added one gets them. A new prefix, or discovery switched off, needs a restart (subscriptions are
        made at start)."""
        self.configured = {p.name for p in new.pipelines}
        # discovery and prefix stay as started (the daemon's reload warns when they changed)
        kept = {"discovery": self.cfg.discovery, "prefix": self.cfg.prefix}
        self.cfg = self.builder.cfg = new.homeassistant.model_copy(update=kept)
        self.announce_after(swaps)

    def announce_after(self, swaps: Iterable[threading.Event]) -> None:
        """Announce once the given model swaps happened (a new model may have another task or labels)."""
        waits = list(swaps)

        def run() -> None:
            for done in waits:
                done.wait(SWAP_WAIT_S)
            self.announce()

        threading.Thread(target=run, name="ha-announce", daemon=True).start()

    # -- inbound (paho's network thread) -------------------------------------------------------------------
    def _on_birth(self, msg: InboundMessage) -> None:
        if msg.payload != b"online" or msg.retain:  # a retained one is an old birth, seen at subscribe
            return
        with self._lock:
            if self._birth_pending:
                self._births_coalesced += 1
                return
            self._birth_pending = True
        timer = threading.Timer(BIRTH_COALESCE_S, self._announce_for_birth)
        timer.name, timer.daemon = "ha-birth", True
        timer.start()

    def _announce_for_birth(self) -> None:
        with self._lock:
            self._birth_pending, more = False, self._births_coalesced
            self._births_coalesced = 0
        births = f" (for {more + 1} births)" if more else ""
        log.info("Home Assistant (re)started: announcing again%s", births)
        self.announce()

    def _on_own_config(self, msg: InboundMessage) -> None:
        with self._lock:
            if not msg.payload:
                self._retained.discard(msg.topic)
                return
            self._retained.add(msg.topic)
            stale = self._announced and msg.topic not in self._current
        if stale:
            self._take_back(msg.topic)

    def _take_back(self, topic: str) -> None:
        if self.connection.publish(topic, b"", qos=1, retain=True):
            log.info("Home Assistant: removed the entity of %s (no longer configured)", topic)


def start_discovery(
    cfg: AgentConfig, publisher: MqttPublisher, pipelines: Callable[[], Iterable[Any]]
) -> Discovery | None:
    """The daemon's discovery (None unless ``homeassistant.discovery``), started. ``pipelines()`` gives the
    running ``Pipeline`` objects (name, result topic, and the task of the model they run)."""
    if not cfg.homeassistant.discovery:
        return None

    def views() -> list[PipelineView]:
        return [PipelineView.of(p.name, p.topic, p.stages.post) for p in pipelines()]

    discovery = Discovery(
        cfg.homeassistant,
        cfg.device_id,
        publisher.connection,
        status_topic=publisher.status_topic,
        stats_topic=publisher.topic("stats"),
        pipelines=views,
    )
    discovery.start()
    return discovery
