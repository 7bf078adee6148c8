"""MqttConnection against a real mosquitto: subscriptions (retained, re-subscribed, bounded, isolated),
on-connect listeners, jittered reconnects, and a broker ACL that keeps devices to their own topics."""

from __future__ import annotations

import itertools
import json
import random
import socket
import threading
import time
from pathlib import Path

import pytest

from edge_agent.backoff import Backoff
from edge_agent.publish.config import MqttConfig
from edge_agent.publish.connection import InboundMessage, MqttConnection
from edge_agent.publish.payloads import stats_payload
from tests.fixtures.broker import validate_payload
from tests.fixtures.publishing import DEVICE
from tests.waiting import wait_until

STATUS = f"edge/{DEVICE}/status"
DEPLOY = f"edge/{DEVICE}/deploy"
RESULT = f"edge/{DEVICE}/door/result"


class Inbox:
    """A handler that records what it got, thread-safely."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.got: list[InboundMessage] = []

    def __call__(self, msg: InboundMessage) -> None:
        with self.lock:
            self.got.append(msg)

    def payloads(self) -> list[bytes]:
        with self.lock:
            return [m.payload for m in self.got]


def test_subscribe_gets_a_retained_message(mosquitto, publisher) -> None:
    broker = mosquitto()
    broker.publish(DEPLOY, b'{"deployment": 7}', retain=True)
    pub = publisher(broker.mqtt_config(), start=False)
    inbox = Inbox()
    pub.subscribe(DEPLOY, inbox)
    pub.start()
    assert wait_until(lambda: inbox.got, 10), pub.stats()
    assert inbox.got[0] == InboundMessage(DEPLOY, b'{"deployment": 7}', retain=True, qos=1)
    assert pub.stats()["inbound"] == {"received": 1, "oversized": 0, "handler_errors": 0}


def test_subscription_is_renewed_after_the_broker_restarts(mosquitto, publisher) -> None:
    broker = mosquitto()  # not persistent: a restarted broker has forgotten every subscription
    pub = publisher(broker.mqtt_config())
    inbox = Inbox()
    pub.subscribe(DEPLOY, inbox)  # while connected: subscribed at once
    assert wait_until(lambda: pub.subscribed(DEPLOY), 10)  # the SUBACK: connected alone is too early
    broker.publish(DEPLOY, b"before")
    assert wait_until(lambda: b"before" in inbox.payloads(), 10)
    broker.stop()
    broker.start()
    assert wait_until(lambda: pub.connected and pub.reconnects == 1, 15), pub.stats()
    # Retained, published after the restart: it reaches us only through a SUBSCRIBE sent after the restart.
    broker.publish(DEPLOY, b"after", retain=True)
    assert wait_until(lambda: b"after" in inbox.payloads(), 10), pub.stats()


def test_unsubscribe_stops_delivery_and_survives_a_reconnect(mosquitto, publisher) -> None:
    broker = mosquitto()
    pub = publisher(broker.mqtt_config())
    inbox = Inbox()
    model_topic = "edge/models/" + "a" * 64
    pub.subscribe(model_topic, inbox)
    assert wait_until(lambda: pub.subscribed(model_topic), 10)
    broker.publish(model_topic, b"one")
    assert wait_until(lambda: inbox.payloads() == [b"one"], 10)
    pub.unsubscribe(model_topic)
    pub.unsubscribe(model_topic)  # twice: harmless
    broker.publish(model_topic, b"two", retain=True)
    broker.stop()
    broker.start()
    assert wait_until(lambda: pub.connected and pub.reconnects == 1, 15), pub.stats()
    time.sleep(0.5)  # a renewed subscription would get the retained "two" now
    assert inbox.payloads() == [b"one"]
    assert not pub.subscribed(model_topic)


def test_subscribed_only_while_the_broker_has_granted_it(mosquitto, publisher) -> None:
    """``subscribed`` is the SUBACK, not the CONNACK: false before it and after a disconnect, true again once
    the broker granted the renewed subscription, false once unsubscribed."""
    broker = mosquitto()
    pub = publisher(broker.mqtt_config(), start=False)
    pub.subscribe(DEPLOY, Inbox())
    assert not pub.subscribed(DEPLOY)
    pub.start()
    assert wait_until(lambda: pub.subscribed(DEPLOY), 10), pub.stats()
    late = f"{DEPLOY}/late"
    pub.subscribe(late, Inbox())  # while connected: sent at once
    assert wait_until(lambda: pub.subscribed(late), 10), pub.stats()
    assert not pub.subscribed(f"{DEPLOY}/never")
    broker.stop()
    assert wait_until(lambda: not pub.connected, 10)
    assert not pub.subscribed(DEPLOY) and not pub.subscribed(late)
    broker.start()
    assert wait_until(lambda: pub.subscribed(DEPLOY) and pub.subscribed(late), 15), pub.stats()
    pub.unsubscribe(late)
    assert not pub.subscribed(late) and pub.subscribed(DEPLOY)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_a_refused_subscription_is_reported_and_never_counted_as_subscribed(
    mosquitto, publisher, tmp_path: Path, protocol: str
) -> None:
    """A broker whose ACL refuses a SUBSCRIBE (EMQX, HiveMQ, mosquitto's dynamic-security plugin) says so only
    in the SUBACK: without reading it, the device would wait for deployments that can never arrive."""
    plugin = next(iter(sorted(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so"))), None)
    if plugin is None:
        pytest.skip("no mosquitto dynamic-security plugin (Debian's mosquitto package has it)")
    dynsec = tmp_path / "dynamic-security.json"
    access = ("publishClientSend", "publishClientReceive", "subscribe", "unsubscribe")
    everything = dict.fromkeys(access, True)
    deny_deploy = {"acltype": "subscribePattern", "topic": f"{DEPLOY}/#", "allow": False, "priority": 0}
    dynsec.write_text(json.dumps({
        "defaultACLAccess": everything, "clients": [], "anonymousGroup": "anonymous",
        "groups": [{"groupname": "anonymous", "roles": [{"rolename": "device"}], "clients": []}],
        "roles": [{"rolename": "device", "acls": [deny_deploy]}],
    }))  # fmt: skip
    broker = mosquitto(extra_config=(f"plugin {plugin}", f"plugin_opt_config_file {dynsec}"))
    pub = publisher(broker.mqtt_config(protocol=protocol))
    pub.subscribe(f"{DEPLOY}/#", Inbox())
    pub.subscribe(STATUS, Inbox())
    assert wait_until(lambda: pub.subscribed(STATUS), 10), pub.stats()
    assert wait_until(lambda: pub.last_error is not None, 10), pub.stats()
    assert f"refused the subscription to {DEPLOY}/#" in pub.last_error
    assert "ACL" in pub.last_error
    assert not pub.subscribed(f"{DEPLOY}/#")
    assert pub.connected  # the rest goes on: results still go out
    pub.publish_result(RESULT, b'{"seq": 1}', qos=1)
    assert pub.flush(timeout=10), pub.stats()


def test_oversized_payloads_are_dropped_and_counted(mosquitto, publisher, outbox) -> None:
    broker = mosquitto()
    pub = publisher(broker.mqtt_config())
    inbox = Inbox()
    pub.subscribe(f"{DEPLOY}/#", inbox, max_bytes=1000)  # "deploy/#" matches "deploy" too
    assert wait_until(lambda: pub.subscribed(f"{DEPLOY}/#"), 10)
    broker.publish(DEPLOY, b"x" * 1001)
    broker.publish(DEPLOY, b"x" * 1000)
    assert wait_until(lambda: inbox.got, 10)
    time.sleep(0.2)
    assert inbox.payloads() == [b"x" * 1000]
    inbound = pub.stats()["inbound"]
    assert inbound == {"received": 2, "oversized": 1, "handler_errors": 0}
    stats = stats_payload(
        device=DEVICE, uptime_s=1.0, pipelines={}, mqtt=pub.stats(), outbox=pub.outbox.stats()
    )
    validate_payload(stats, "stats")


def test_a_failing_handler_is_counted_and_isolated(mosquitto, subscriber, publisher, outbox) -> None:
    broker = mosquitto()
    sub = subscriber(broker, RESULT)
    pub = publisher(broker.mqtt_config())
    inbox = Inbox()

    def handler(msg: InboundMessage) -> None:
        if msg.payload == b"bad":
            raise ValueError("cannot parse this deployment")
        inbox(msg)

    pub.subscribe(DEPLOY, handler)
    assert wait_until(lambda: pub.subscribed(DEPLOY), 10)
    for _ in range(3):
        broker.publish(DEPLOY, b"bad")
    broker.publish(DEPLOY, b"good")
    assert wait_until(lambda: b"good" in inbox.payloads(), 10), pub.stats()
    assert pub.stats()["inbound"]["handler_errors"] == 3
    # paho's network thread lived through it: results still go out and are acknowledged.
    pub.publish_result(RESULT, json.dumps({"seq": 1}).encode(), qos=1)
    assert pub.flush(timeout=10), pub.stats()
    sub.wait_for(lambda m: len(m) == 1, timeout=10)
    assert pub.connected and pub.reconnects == 0 and pub.last_error is None


def test_on_connect_listeners_run_after_every_reconnect(mosquitto, subscriber, publisher) -> None:
    broker = mosquitto()
    sub = subscriber(broker, STATUS)
    pub = publisher(broker.mqtt_config(), start=False)
    calls: list[bool] = []

    def broken(connection: MqttConnection) -> None:
        raise RuntimeError("a listener bug")

    pub.add_on_connect(broken)  # runs first and fails: the others still run
    pub.add_on_connect(lambda connection: calls.append(connection.connected))
    pub.start()
    assert wait_until(lambda: len(calls) == 1, 10)
    sub.wait_for(lambda m: m.count((STATUS, b"online", False)) == 1, timeout=10)
    broker.stop()
    broker.start()
    assert wait_until(lambda: len(calls) == 2, 15), pub.stats()
    assert calls == [True, True]
    # `online` is one of the listeners: announced again (retained) on the restarted broker.
    sub.wait_for(lambda m: [p for t, p, _ in m if t == STATUS].count(b"online") == 2, timeout=10)
    late: list[bool] = []
    pub.add_on_connect(lambda connection: late.append(True))  # added while connected: runs at once
    assert late == [True]


class RecordingBackoff(Backoff):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.delays: list[float] = []

    def next_delay(self) -> float:
        delay = super().next_delay()
        self.delays.append(delay)
        return delay


def test_reconnect_waits_are_the_policys_jittered_delays() -> None:
    """A port that accepts TCP and hangs up at once: every attempt fails after the connect, and paho waits
    exactly the delay drawn from the policy before the next one (not its own un-jittered doubling)."""
    accepts: list[float] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepts.append(time.monotonic())
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    backoff = RecordingBackoff(0.2, 0.8, rng=random.Random(14))
    cfg = MqttConfig(port=port, reconnect_min_s=0.2, reconnect_max_s=0.8)
    conn = MqttConnection(cfg, "jitter-test", backoff=backoff)
    conn.start()
    try:
        assert wait_until(lambda: len(accepts) >= 6, 20), (accepts, backoff.delays)
    finally:
        conn.stop()
        server.close()
    steps = [0.2, 0.4, 0.8, 0.8, 0.8]
    delays = backoff.delays[:5]
    assert all(step / 2 <= d <= step for d, step in zip(delays, steps, strict=True)), delays
    assert all(d < step for d, step in zip(delays, steps, strict=True))  # jittered, not the plain doubling
    gaps = [b - a for a, b in itertools.pairwise(accepts[:6])]
    for gap, delay in zip(gaps, delays, strict=True):
        assert delay - 0.02 <= gap <= delay + 0.5, (gaps, delays)  # paho waited that delay, give or take load


def test_acl_keeps_a_device_to_its_own_topics(mosquitto, subscriber, publisher, tmp_path: Path) -> None:
    """mosquitto acknowledges and silently drops a PUBLISH the ACL denies (MQTT 3.1.1): only a subscriber
    can tell. The marker sent after it on the same connection proves the denied one had its chance."""
    broker = mosquitto(
        users={"observer": "watch", DEVICE: "s3cret", "pi-other": "other"},
        acl={
            "observer": ["read #"],
            DEVICE: ["readwrite edge/pi-test/#"],
            "pi-other": ["readwrite edge/pi-other/#"],
        },
    )
    sub = subscriber(broker, "edge/#", username="observer", password="watch")
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    pub = publisher(broker.mqtt_config(username=DEVICE, password_file=pw))
    other = "edge/pi-other/door/result"
    pub.publish_result(other, b'{"seq": 1}', qos=1)
    pub.publish_result(RESULT, b'{"seq": 2}', qos=1)
    assert pub.flush(timeout=10), pub.stats()
    msgs = sub.wait_for(lambda m: any(t == RESULT for t, _, _ in m), timeout=10)
    assert (STATUS, b"online", False) in msgs  # its own topics work
    assert not [t for t, _, _ in sub.snapshot() if t == other]
    # The other device may not write into this device's deploy topic either.
    inbox = Inbox()
    pub.subscribe(DEPLOY, inbox)
    broker.publish(DEPLOY, b"forged", username="pi-other", password="other")
    broker.publish(f"edge/{DEVICE}/marker", b"m", username=DEVICE, password="s3cret")
    sub.wait_for(lambda m: any(t.endswith("/marker") for t, _, _ in m), timeout=10)
    time.sleep(0.2)
    assert inbox.got == [] and not [t for t, _, _ in sub.snapshot() if t == DEPLOY]
