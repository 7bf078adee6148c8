"""What Home Assistant is told: one discovery config per entity, built from a pipeline's task.

Every entity reads a topic the daemon already publishes (a pipeline's result topic, the stats topic) through
``value_template``/``json_attributes_template``; a discovery payload carries names, labels, units, topics
and templates, never a result value, a frame or a sample. Home Assistant's own names are used (not its
abbreviations): the payloads stay readable and the privacy check can list the keys it allows.

Ids: ``unique_id`` is ``edge-agent-<device_id>-<pipeline>-<key>`` (stable across restarts and reloads: it
depends on the names only); ``object_id`` (so the entity id) is ``<device>_<pipeline>_<key>`` slugified,
e.g. ``sensor.pi_kitchen_door_label``. Discovery topics are ``<prefix>/<component>/<node>/<object>/config``
with ``node`` the slugified device id and ``object`` the slugified ``<pipeline>_<key>``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_agent import __version__
from edge_agent.homeassistant.config import HomeAssistantConfig

log = logging.getLogger(__name__)

_NOT_OBJECT_ID = re.compile(r"[^a-z0-9_-]+")  # Home Assistant's object ids: [a-zA-Z0-9_-]+ (lower-cased here)
_logged_slugs: set[tuple[str, str]] = set()

# Units Home Assistant 2024.1 accepts for a device class (a wrong pair is an error there, so only sure ones).
_DEVICE_CLASS_BY_UNIT = {
    **dict.fromkeys(("°C", "°F", "K"), "temperature"),
    **dict.fromkeys(("Pa", "hPa", "kPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi"), "pressure"),
    **dict.fromkeys(("V", "mV"), "voltage"),
    **dict.fromkeys(("A", "mA"), "current"),
    **dict.fromkeys(("W", "kW"), "power"),
    **dict.fromkeys(("Hz", "kHz", "MHz", "GHz"), "frequency"),
    "lx": "illuminance",
}


def slug(name: str, what: str) -> str:
    """``name`` as a Home Assistant object id (lower case, ``[a-z0-9_-]``); a change is logged once, since
    the user sees the slug (in topics and entity ids), not the name."""
    out = _NOT_OBJECT_ID.sub("_", name.lower()).strip("_") or "x"
    if out != name and (what, name) not in _logged_slugs:
        _logged_slugs.add((what, name))
        log.info("Home Assistant: %s %r is %r in discovery topics and entity ids", what, name, out)
    return out


@dataclass(frozen=True)
class PipelineView:
    """What discovery needs to know about a running pipeline: its result topic and its task's names."""

    name: str
    result_topic: str
    task: str | None  # classification, detection, regression, anomaly; anything else: diagnostics only
    labels: tuple[str, ...] = ()
    detection_filter: tuple[str, ...] = ()  # the detection postprocessor's ``classes`` option
    values: tuple[str, ...] = ()  # regression: value names, in order
    units: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, result_topic: str, post: Any) -> PipelineView:
        """From a running postprocessor (``ModelStages.post``): its name is the task."""
        options = getattr(post, "options", None)
        return cls(
            name=name,
            result_topic=result_topic,
            task=getattr(post, "name", None),
            labels=tuple(getattr(post, "labels", None) or ()),
            detection_filter=tuple(getattr(options, "classes", None) or ()),
            values=tuple(getattr(post, "names", None) or ()),
            units=dict(getattr(post, "units", None) or {}),
        )


@dataclass(frozen=True)
class Entity:
    component: str  # sensor, binary_sensor
    object_id: str  # in the discovery topic, unique under the node
    config: dict[str, Any]

    def topic(self, prefix: str, node: str) -> str:
        return f"{prefix}/{self.component}/{node}/{self.object_id}/config"

    def payload(self) -> bytes:
        return json.dumps(self.config, separators=(",", ":"), sort_keys=True).encode()


def _q(text: str) -> str:
    """A Jinja string literal for ``text`` (JSON's escaping is Jinja's)."""
    return json.dumps(text)


class EntityBuilder:
    """Builds the entities of one device; ``entities(views)`` is the whole set to announce."""

    def __init__(self, cfg: HomeAssistantConfig, device_id: str, status_topic: str, stats_topic: str):
        self.cfg = cfg
        self.device_id = device_id
        self.node = slug(device_id, "device_id")
        self.stats_topic = stats_topic
        self.common = {
            "availability_topic": status_topic,
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": {
                "identifiers": [f"edge-agent-{device_id}"],
                "name": device_id,
                "manufacturer": "edge-agent",
                "model": "edge-agent",
                "sw_version": __version__,
            },
            "origin": {"name": "edge-agent", "sw_version": __version__},
        }

    def entities(self, views: Iterable[PipelineView]) -> list[Entity]:
        out = self._device_diagnostics()
        for view in views:
            out += self._task_entities(view)
            out += self._pipeline_diagnostics(view)
        return out

    # -- one entity ----------------------------------------------------------------------------------------
    def _entity(
        self, component: str, pipeline: str | None, key: str, key_slug: str, name: str, **config: Any
    ) -> Entity:
        parts = [pipeline, key] if pipeline is not None else [key]
        obj = "_".join([slug(pipeline, "pipeline name"), key_slug] if pipeline is not None else [key_slug])
        return Entity(
            component,
            obj,
            {
                **self.common,
                "name": f"{pipeline} {name}" if pipeline is not None else name,
                "unique_id": "-".join(["edge-agent", self.device_id, *parts]),
                "object_id": f"{self.node}_{obj}",
                **config,
            },
        )

    # -- per task ------------------------------------------------------------------------------------------
    def _task_entities(self, v: PipelineView) -> list[Entity]:
        topic = v.result_topic
        if v.task == "classification":
            return [
                self._entity(
                    "sensor",
                    v.name,
                    "label",
                    "label",
                    "label",
                    state_topic=topic,
                    value_template="{{ value_json.label }}",
                    json_attributes_topic=topic,
                    json_attributes_template="{{ {'top_k': value_json.top_k} | tojson }}",
                    icon="mdi:label-outline",
                ),
                self._entity(
                    "sensor",
                    v.name,
                    "score",
                    "score",
                    "score",
                    state_topic=topic,
                    value_template="{{ value_json.score }}",
                    state_class="measurement",
                ),
            ]
        if v.task == "detection":
            out = []
            for cls, cls_slug in self._unique_slugs(self.detection_classes(v), "detection class"):
                matches = f"value_json.detections | selectattr('label', 'equalto', {_q(cls)}) | list | length"
                out.append(
                    self._entity(
                        "sensor",
                        v.name,
                        f"{cls}-count",
                        f"{cls_slug}_count",
                        f"{cls} count",
                        state_topic=topic,
                        value_template=f"{{{{ {matches} }}}}",
                        state_class="measurement",
                        icon="mdi:counter",
                    )
                )
                # ON while results have the class; nothing otherwise, so off_delay turns it off (debounce)
                out.append(
                    self._entity(
                        "binary_sensor",
                        v.name,
                        f"{cls}-detected",
                        f"{cls_slug}_detected",
                        f"{cls} detected",
                        state_topic=topic,
                        value_template=f"{{{{ 'ON' if {matches} > 0 else '' }}}}",
                        off_delay=self.cfg.off_delay_s,
                    )
                )
            return out
        if v.task == "regression":
            out = []
            for value, value_slug in self._unique_slugs(v.values, "regression value"):
                unit = v.units.get(value)
                extra: dict[str, Any] = {"unit_of_measurement": unit} if unit else {}
                if unit in _DEVICE_CLASS_BY_UNIT:
                    extra["device_class"] = _DEVICE_CLASS_BY_UNIT[unit]
                out.append(
                    self._entity(
                        "sensor",
                        v.name,
                        value,
                        value_slug,
                        value,
                        state_topic=topic,
                        value_template=f"{{{{ value_json['values'][{_q(value)}] }}}}",
                        state_class="measurement",
                        **extra,
                    )
                )
            return out
        if v.task == "anomaly":
            return [
                self._entity(
                    "binary_sensor",
                    v.name,
                    "anomaly",
                    "anomaly",
                    "anomaly",
                    state_topic=topic,
                    value_template="{{ 'ON' if value_json.is_anomaly else 'OFF' }}",
                    device_class="problem",
                ),
                self._entity(
                    "sensor",
                    v.name,
                    "anomaly-score",
                    "anomaly_score",
                    "anomaly score",
                    state_topic=topic,
                    value_template="{{ value_json.anomaly_score }}",
                    json_attributes_topic=topic,
                    json_attributes_template="{{ {'threshold': value_json.threshold} | tojson }}",
                    state_class="measurement",
                ),
            ]
        return []  # segmentation or a plugin's task: its diagnostics only

    def detection_classes(self, v: PipelineView) -> list[str]:
        """The config's list for this pipeline; else the postprocessor's filter; else the first labels."""
        if v.name in self.cfg.detection_classes:
            return list(self.cfg.detection_classes[v.name])
        return list(v.detection_filter or v.labels)[: self.cfg.max_detection_classes]

    @staticmethod
    def _unique_slugs(names: Iterable[str], what: str) -> list[tuple[str, str]]:
        """(name, slug) pairs; two names with the same slug get ``_2``, ``_3``... (in order)."""
        seen: dict[str, int] = {}
        out = []
        for name in dict.fromkeys(names):
            s = slug(name, what)
            seen[s] = seen.get(s, 0) + 1
            out.append((name, s if seen[s] == 1 else f"{s}_{seen[s]}"))
        return out

    # -- diagnostics, from the stats topic -----------------------------------------------------------------
    def _diagnostic(
        self,
        pipeline: str | None,
        key: str,
        name: str,
        template: str,
        component: str = "sensor",
        **config: Any,
    ) -> Entity:
        return self._entity(
            component,
            pipeline,
            key,
            key.replace("-", "_"),
            name,
            state_topic=self.stats_topic,
            value_template=template,
            entity_category="diagnostic",
            **config,
        )

    def _device_diagnostics(self) -> list[Entity]:
        return [
            self._diagnostic(
                None,
                "outbox-depth",
                "outbox depth",
                "{{ value_json.outbox.depth }}",
                state_class="measurement",
                icon="mdi:tray-full",
            ),
            self._diagnostic(
                None,
                "outbox-dropped",
                "results dropped",
                "{{ value_json.outbox.dropped }}",
                state_class="total_increasing",
                icon="mdi:delete-alert",
            ),
        ]

    def _pipeline_diagnostics(self, v: PipelineView) -> list[Entity]:
        p = f"value_json.pipelines[{_q(v.name)}]"
        return [
            self._diagnostic(
                v.name,
                "fps",
                "fps",
                f"{{{{ {p}.fps }}}}",
                unit_of_measurement="fps",
                state_class="measurement",
                icon="mdi:speedometer",
            ),
            # no invoke sample yet (before the first frame): None, which Home Assistant shows as unknown
            self._diagnostic(
                v.name,
                "invoke-p99",
                "invoke p99",
                f"{{{{ {p}.latency_ms.get('invoke', {{}}).get('p99') }}}}",
                unit_of_measurement="ms",
                device_class="duration",
                state_class="measurement",
            ),
            self._diagnostic(
                v.name,
                "skipped",
                "frames skipped",
                f"{{{{ {p}.skipped }}}}",
                state_class="total_increasing",
                icon="mdi:debug-step-over",
            ),
            self._diagnostic(
                v.name, "model-sha", "model sha256", f"{{{{ {p}.model.sha256[:12] }}}}", icon="mdi:pound"
            ),
            # off while the camera, stream or sensor is away (unplugged, down): an automation can say so
            self._diagnostic(
                v.name,
                "source-connected",
                "source connected",
                f"{{{{ 'ON' if {p}.source.connected else 'OFF' }}}}",
                component="binary_sensor",
                device_class="connectivity",
            ),
            # the pipeline's own error, else why its source is away, else why its evidence frames are not kept
            # (as the status line says); a state is at most 255 characters in Home Assistant
            self._diagnostic(
                v.name,
                "last-error",
                "last error",
                f"{{{{ ({p}.last_error or ({p}.source.last_error if not {p}.source.connected else none)"
                f" or ({p}.evidence.last_error if {p}.evidence is defined else none)"
                " or 'none')[:255] }}",
                icon="mdi:alert-circle-outline",
            ),
        ]
