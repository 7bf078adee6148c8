"""What scripts/fleet-sim watches: a read-only MQTT subscriber (statuses, deploy states, the broker's $SYS
byte counters, each message stamped with its receive time) and a sampler of a process's peak RSS."""

from __future__ import annotations

import json
import statistics
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import psutil

TOPICS = ("edge/+/status", "edge/+/deploy/state", "$SYS/broker/bytes/received", "$SYS/broker/bytes/sent")


class Monitor:
    """Subscribes as ``username`` (reconnecting every 0.1 s after a broker restart) and keeps what it saw."""

    def __init__(self, port: int, username: str, password: str) -> None:
        self.port = port
        self.lock = threading.Lock()
        self.online: dict[str, bool] = {}
        self.groups: dict[str, list[str]] = {}
        self.states: list[tuple[float, str, dict[str, Any]]] = []  # (receive time, device, payload)
        self.sys: dict[str, int] = {}
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fleet-sim-monitor")
        self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(0.1, 0.1)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message

    def start(self, timeout: float = 10.0) -> Monitor:
        self.client.connect_async("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            self.close()
            raise RuntimeError(f"the monitor could not subscribe on 127.0.0.1:{self.port}")
        return self

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(t, 1) for t in TOPICS])

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        now, topic, payload = time.time(), msg.topic, bytes(msg.payload)
        with self.lock:
            if topic.startswith("$SYS/"):
                self.sys[topic.rsplit("/", 1)[1]] = int(payload or b"0")
                return
            device = topic.split("/")[1]
            if topic.endswith("/status"):
                self.online[device] = payload.strip() == b"online"
            elif payload:
                try:
                    state = json.loads(payload)
                except ValueError:
                    return
                self.groups[device] = list(state.get("groups") or [])
                self.states.append((now, device, state))

    def ready(self, group: str) -> set[str]:
        """Devices online whose deploy state says they are in ``group`` (what ``edge-fleet deploy`` needs)."""
        with self.lock:
            return {d for d, on in self.online.items() if on and group in self.groups.get(d, [])}

    def first_state(self, device: str, number: int, state: str, confirmed: bool) -> float | None:
        with self.lock:
            for t, d, s in self.states:
                same = d == device and s.get("number") == number and s.get("state") == state
                if same and (s.get("confirmed") or not confirmed):
                    return t
        return None

    def sys_bytes(self, timeout: float = 5.0) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if {"received", "sent"} <= self.sys.keys():
                    return {"received": self.sys["received"], "sent": self.sys["sent"]}
            time.sleep(0.1)
        raise RuntimeError("no $SYS/broker/bytes counters from the broker (sys_interval)")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class RssSampler:
    """Peak RSS of one process, sampled every ``interval`` s in a thread, between start() and stop()."""

    def __init__(self, proc: psutil.Process, interval: float = 0.1) -> None:
        self.proc, self.interval, self.peak = proc, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            if self._stop.wait(self.interval):
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


def percentiles(values: list[float]) -> dict[str, float | None]:
    """min / median / p90 / max (nearest rank), rounded to ms; None for an empty list."""
    if not values:
        return {"min": None, "median": None, "p90": None, "max": None, "n": 0}
    s = sorted(values)
    p90 = s[min(len(s) - 1, max(0, round(0.9 * len(s) + 0.5) - 1))]
    return {
        "min": round(s[0], 3),
        "median": round(statistics.median(s), 3),
        "p90": round(p90, 3),
        "max": round(s[-1], 3),
        "n": len(s),
    }
