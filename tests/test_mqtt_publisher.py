"""MqttPublisher against a real mosquitto: delivery, status/Last Will, outages, crashes, TLS, passwords."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge_agent.errors import ConfigError
from edge_agent.publish.mqtt import MqttConfig, MqttPublisher, TlsConfig
from edge_agent.publish.outbox import Outbox, SeqCounter
from edge_agent.publish.payloads import result_payload
from tests.fixtures.broker import Mosquitto, Subscriber, free_port, validate_payload
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[1]
DEVICE = "pi-test"
SHA = "ab" * 32
LAT = {"capture_age": 1.0, "preprocess": 0.5, "invoke": 3.0, "postprocess": 0.1, "total": 4.6}
RESULT_TOPIC = f"edge/{DEVICE}/door/result"
STATUS_TOPIC = f"edge/{DEVICE}/status"


def payload(seq: int) -> bytes:
    fields = {"label": "open", "class_id": 1, "score": 0.9}
    return result_payload(device=DEVICE, pipeline="door", seq=seq, model_name="door", model_sha256=SHA,
                          fields=fields, latency_ms=LAT, frame_index=seq)  # fmt: skip


def seqs(sub: Subscriber) -> list[int]:
    return [json.loads(p)["seq"] for p in sub.payloads(RESULT_TOPIC)]


def has_all(expected: set[int]):
    def check(msgs: list) -> bool:
        got = {json.loads(p)["seq"] for t, p, _ in msgs if t == RESULT_TOPIC}
        return expected <= got

    return check


def test_results_arrive_valid_in_order_and_status_is_retained(
    mosquitto, subscriber, outbox, publisher
) -> None:
    broker = mosquitto()
    sub = subscriber(broker, "edge/#")
    pub = publisher(broker.mqtt_config())
    assert pub.topic("door", "result") == RESULT_TOPIC
    counter = SeqCounter(outbox, "door")
    sent = [counter.next() for _ in range(50)]
    for s in sent:
        pub.publish_result(RESULT_TOPIC, payload(s), qos=1)
    assert pub.flush(timeout=15), pub.stats()
    sub.wait_for(has_all(set(sent)), timeout=10)
    for raw in sub.payloads(RESULT_TOPIC):
        validate_payload(raw, "result")
    assert seqs(sub) == sent  # one connection, no outage: exactly once, in order
    assert outbox.depth() == 0
    stats = pub.stats()
    assert stats["connected"] is True and stats["acked"] == 50 and stats["last_error"] is None
    # A subscriber that arrives later still learns the device is online (retained).
    late = subscriber(broker, STATUS_TOPIC)
    late.wait_for(lambda m: (STATUS_TOPIC, b"online", True) in m, timeout=5)


def test_clean_stop_drains_and_publishes_offline(mosquitto, subscriber, outbox) -> None:
    broker = mosquitto()
    sub = subscriber(broker, "edge/#")
    pub = MqttPublisher(broker.mqtt_config(), DEVICE, outbox)
    pub.start()
    assert wait_until(lambda: pub.connected, 10), "connect"
    for s in range(1, 201):
        pub.publish_result(RESULT_TOPIC, payload(s), qos=1)
    pub.stop(drain_timeout=15)  # returns only after the drain
    assert outbox.depth() == 0
    assert not pub.connected
    sub.wait_for(has_all(set(range(1, 201))), timeout=10)
    sub.wait_for(lambda m: (STATUS_TOPIC, b"offline", False) in m, timeout=5)
    late = subscriber(broker, STATUS_TOPIC)
    late.wait_for(lambda m: (STATUS_TOPIC, b"offline", True) in m, timeout=5)
    pub.stop(drain_timeout=1)  # a second stop is harmless


@pytest.mark.parametrize("tls", [False, True])
def test_packets_leave_at_once_without_nagle(mosquitto, outbox, publisher, tls: bool) -> None:
    # With Nagle on, a result published after a QoS 0 stats message waits ~40 ms for the broker's delayed ACK.
    broker = mosquitto(tls=tls)
    pub = publisher(broker.mqtt_config())
    assert wait_until(lambda: pub.connected, 10), "connect"
    sock = pub.connection.client.socket()
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_qos0_skips_the_outbox(mosquitto, subscriber, outbox, publisher) -> None:
    broker = mosquitto()
    sub = subscriber(broker, "edge/#")
    pub = publisher(broker.mqtt_config())
    assert wait_until(lambda: pub.connected, 10), "connect"
    pub.publish_result(RESULT_TOPIC, payload(7), qos=0)
    assert outbox.depth() == 0
    sub.wait_for(has_all({7}), timeout=5)
    assert pub.publish_now(pub.topic("stats"), b"{}", qos=0) is True
    sub.wait_for(lambda m: any(t == f"edge/{DEVICE}/stats" for t, _, _ in m), timeout=5)


def test_mqtt5(mosquitto, subscriber, outbox, publisher) -> None:
    broker = mosquitto()
    sub = subscriber(broker, "edge/#")
    pub = publisher(broker.mqtt_config(protocol="5"))
    for s in range(1, 11):
        pub.publish_result(RESULT_TOPIC, payload(s), qos=1)
    assert pub.flush(timeout=10)
    sub.wait_for(has_all(set(range(1, 11))), timeout=5)


CHILD = """
import json, sys, time
from pathlib import Path
from edge_agent.publish.mqtt import MqttConfig, MqttPublisher
from edge_agent.publish.outbox import Outbox
cfg = MqttConfig.model_validate_json(sys.argv[1])
outbox = Outbox(Path(sys.argv[2]))
pub = MqttPublisher(cfg, sys.argv[3], outbox)
pub.start()
for i in range(int(sys.argv[4])):
    pub.publish_result(f"edge/{sys.argv[3]}/door/result", json.dumps({"seq": i + 1}).encode(), 1)
assert pub.wait_stored(10)  # durable from here on: the SIGKILL below must not lose any of them
if sys.argv[5] == "wait-connected":
    deadline = time.monotonic() + 10
    while not pub.connected and time.monotonic() < deadline:
        time.sleep(0.01)
print("connected" if pub.connected else "disconnected", outbox.depth(), flush=True)
time.sleep(120)   # SIGKILLed here: no stop(), no clean disconnect
"""


def run_child(cfg: MqttConfig, db: Path, n: int, mode: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, cfg.model_dump_json(), str(db), DEVICE, str(n), mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline().strip()  # type: ignore[union-attr]
    if not line:
        proc.kill()
        raise AssertionError(f"child failed: {proc.stderr.read()}")  # type: ignore[union-attr]
    return proc, line


def sigkill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def test_last_will_offline_when_the_process_is_killed(mosquitto, subscriber, tmp_path: Path) -> None:
    broker = mosquitto()
    sub = subscriber(broker, STATUS_TOPIC)
    proc, line = run_child(broker.mqtt_config(), tmp_path / "outbox.db", 0, "wait-connected")
    try:
        assert line.startswith("connected")
        sub.wait_for(lambda m: (STATUS_TOPIC, b"online", False) in m, timeout=5)
    finally:
        sigkill(proc)
    sub.wait_for(lambda m: (STATUS_TOPIC, b"offline", False) in m, timeout=10)
    late = subscriber(broker, STATUS_TOPIC)  # the Will is retained
    late.wait_for(lambda m: (STATUS_TOPIC, b"offline", True) in m, timeout=5)


def test_results_of_a_killed_daemon_are_sent_after_restart(mosquitto, subscriber, tmp_path: Path) -> None:
    """A daemon that cannot reach its broker is SIGKILLed with 300 results queued: the next run sends all."""
    broker = mosquitto()
    sub = subscriber(broker, "edge/#")
    db = tmp_path / "outbox.db"
    dead = broker.mqtt_config(port=free_port())  # nothing listens there
    proc, line = run_child(dead, db, 300, "no-wait")
    sigkill(proc)
    assert line == "disconnected 300"
    with Outbox(db) as outbox:
        assert outbox.depth() == 300
        pub = MqttPublisher(broker.mqtt_config(), DEVICE, outbox)
        pub.start()
        try:
            assert pub.flush(timeout=20), pub.stats()
        finally:
            pub.stop(drain_timeout=5)
    sub.wait_for(has_all(set(range(1, 301))), timeout=10)
    assert seqs(sub) == list(range(1, 301))  # replayed in seq order


STREAMING_CHILD = """
import json, sys, time
from pathlib import Path
from edge_agent.publish.mqtt import MqttConfig, MqttPublisher
from edge_agent.publish.outbox import Outbox
cfg = MqttConfig.model_validate_json(sys.argv[1])
pub = MqttPublisher(cfg, sys.argv[3], Outbox(Path(sys.argv[2])))
pub.start()
while not pub.connected:
    time.sleep(0.01)
print("streaming", flush=True)
seq = 0
while True:   # at a fast sensor pipeline's rate (publish_result itself does not wait), until SIGKILL
    seq += 1
    pub.publish_result(f"edge/{sys.argv[3]}/door/result", json.dumps({"seq": seq}).encode(), 1)
    time.sleep(0.0003)
"""


def test_daemon_killed_mid_stream_loses_nothing(mosquitto, subscriber, tmp_path: Path) -> None:
    """SIGKILL while results stream and PUBACKs are in flight: the next run sends everything not yet acked."""
    broker = mosquitto()
    sub = subscriber(broker, RESULT_TOPIC)
    db = tmp_path / "outbox.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", STREAMING_CHILD, broker.mqtt_config().model_dump_json(), str(db), DEVICE],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "streaming"  # type: ignore[union-attr]
        sub.wait_for(lambda m: len(m) >= 500, timeout=20)  # well into the stream
    finally:
        sigkill(proc)
    before = set(seqs(sub))
    with Outbox(db) as outbox:
        left = {json.loads(m.payload)["seq"] for m in outbox.pending(limit=1_000_000)}
        highest = max(before | left)
        assert left, "the kill came after everything was acked; the test proves nothing"
        pub = MqttPublisher(MqttConfig(host=broker.host, port=broker.port), DEVICE, outbox)
        pub.start()
        try:
            assert pub.flush(timeout=30), pub.stats()
        finally:
            pub.stop(drain_timeout=5)
    sub.wait_for(has_all(set(range(1, highest + 1))), timeout=15)  # 1..highest: no hole anywhere


def test_broker_killed_while_publishing_loses_nothing(mosquitto, subscriber, outbox, publisher) -> None:
    """~15 results/s; the broker is SIGKILLed for 3 s and comes back: every seq arrives, the outbox drains."""
    broker = mosquitto(persistent=True)
    # A persistent session, so the *test* does not miss what the broker delivers before it resubscribes.
    sub = subscriber(broker, "edge/#", client_id="observer", clean_session=False)
    time.sleep(1.2)  # the broker autosaves every second: the observer's subscription is on disk
    pub = publisher(broker.mqtt_config())
    assert wait_until(lambda: pub.connected, 10), "connect"
    counter = SeqCounter(outbox, "door")
    sent: list[int] = []
    killed = revived = False
    errors_seen: list[str | None] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 7.0:
        s = counter.next()
        pub.publish_result(RESULT_TOPIC, payload(s), qos=1)
        sent.append(s)
        elapsed = time.monotonic() - t0
        if not killed and elapsed > 1.5:
            broker.stop(kill=True)
            killed = True
        if killed and not revived and elapsed > 4.5:
            errors_seen.append(pub.last_error)
            assert not pub.connected  # never lies about being connected
            assert outbox.depth() > 0
            broker.start()
            revived = True
        time.sleep(1 / 15)
    assert killed and revived
    assert errors_seen[0] and "127.0.0.1" in errors_seen[0]
    assert pub.flush(timeout=20), pub.stats()
    assert outbox.depth() == 0
    sub.wait_for(has_all(set(sent)), timeout=15)
    got = seqs(sub)
    assert set(got) == set(sent)  # duplicates allowed (QoS 1), only with the same seq: no stranger values
    first_seen = list(dict.fromkeys(got))
    assert first_seen == sorted(first_seen)  # the backlog was replayed in seq order
    assert pub.stats()["reconnects"] >= 1
    for raw in sub.payloads(RESULT_TOPIC)[:5]:
        validate_payload(raw)


def test_broker_down_at_start_is_not_fatal(mosquitto, subscriber, outbox, publisher) -> None:
    broker = mosquitto(persistent=True)
    sub = subscriber(broker, "edge/#", client_id="observer", clean_session=False)
    broker.stop(kill=False)  # clean shutdown: the observer's session is saved
    pub = publisher(broker.mqtt_config())
    for s in range(1, 21):
        pub.publish_result(RESULT_TOPIC, payload(s), qos=1)
    assert wait_until(lambda: pub.last_error is not None, 5), "last_error"
    assert "cannot connect to broker 127.0.0.1" in pub.last_error
    assert pub.wait_stored(5) and not pub.connected and outbox.depth() == 20
    broker.start()
    assert pub.flush(timeout=15), pub.stats()
    sub.wait_for(has_all(set(range(1, 21))), timeout=10)
    assert pub.connected and pub.last_error is None


class _HeldOutbox(Outbox):
    """A real outbox whose writes wait for ``release``: the moment a result is in the sender's hands, taken
    from the queue of handed-in results and not yet in SQLite, stays open as long as the test wants."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writing = threading.Event()
        self.release = threading.Event()

    def append_many(self, items):  # type: ignore[no-untyped-def]
        self.writing.set()
        assert self.release.wait(30), "the test never released the outbox"
        return super().append_many(items)


def test_a_result_being_written_is_neither_stored_nor_flushed_yet(mosquitto, tmp_path: Path) -> None:
    # The daemon's clean stop once ended its drain with a result in the sender's hands (CI, seq 2005 left in
    # the outbox after a "drained" stop); wait_stored could likewise say "durable" before the write.
    broker = mosquitto()
    held = _HeldOutbox(tmp_path / "outbox.db")
    pub = MqttPublisher(broker.mqtt_config(), DEVICE, held)
    pub.start()
    try:
        pub.publish_result(RESULT_TOPIC, payload(1), qos=1)
        assert held.writing.wait(10)
        assert pub.sender.has_incoming
        assert not pub.wait_stored(0.3), "said stored while the result was still being written"
        assert not pub.flush(0.3), "said flushed while the result was still being written"
        held.release.set()
        assert pub.wait_stored(10)
        assert pub.flush(10), pub.stats()
        assert held.depth() == 0 and pub.acked == 1
    finally:
        held.release.set()
        pub.stop(5)
        held.close()


def test_a_flow_of_results_is_stored_in_few_transactions_and_all_arrive(
    mosquitto, subscriber, outbox, publisher
) -> None:
    """50 results 2 ms apart (a fast model): stored together, at most once per linger (10 ms), not one SQLite
    transaction (and one wake-up of the sender) per result; none is lost or reordered by it."""
    broker = mosquitto()
    sub = subscriber(broker, "edge/#")
    pub = publisher(broker.mqtt_config(linger_ms=10))
    assert pub.flush(10)
    before = pub.sender._appends
    for s in range(1, 51):
        pub.publish_result(RESULT_TOPIC, payload(s), qos=1)
        time.sleep(0.002)  # the pace of the flow (the scenario), not a wait for an outcome
    assert pub.flush(10), pub.stats()
    stores = pub.sender._appends - before
    assert stores <= 25, f"{stores} transactions for 50 results"
    sub.wait_for(has_all(set(range(1, 51))), timeout=10)
    assert list(dict.fromkeys(seqs(sub))) == list(range(1, 51))


@pytest.mark.parametrize("linger_ms", [0.0, 1000.0])
def test_linger_ms_is_how_long_a_result_in_a_flow_may_wait_to_be_stored(
    mosquitto, outbox, publisher, linger_ms: float
) -> None:
    """A result that follows another within the linger waits for it (stored with whatever else comes); with
    ``linger_ms: 0`` it is stored as soon as the sender is free. The broker is down meanwhile, so no send and
    no PUBACK wakes the sender early; a 1 s linger against a 0.3 s look keeps the margin wide."""
    broker = mosquitto()
    pub = publisher(broker.mqtt_config(linger_ms=linger_ms))
    assert pub.flush(10)
    broker.stop()
    pub.publish_result(RESULT_TOPIC, payload(1), qos=1)  # after a quiet spell: stored at once, either way
    assert pub.wait_stored(5)
    pub.publish_result(RESULT_TOPIC, payload(2), qos=1)
    assert pub.wait_stored(0.3) is (linger_ms == 0)
    assert pub.wait_stored(5)  # the linger over: stored
    assert [json.loads(r.payload)["seq"] for r in outbox.pending(limit=10)] == [1, 2]


def test_the_linger_is_off_while_inference_has_cpus_of_its_own_unless_configured() -> None:
    from edge_agent.publish.config import MqttConfig, linger_s

    assert linger_s(MqttConfig(host="h"), inference_has_own_cpus=True) == 0.0
    assert linger_s(MqttConfig(host="h"), inference_has_own_cpus=False) == 0.01
    assert linger_s(MqttConfig(host="h", linger_ms=3), inference_has_own_cpus=True) == 0.003
    assert linger_s(MqttConfig(host="h", linger_ms=0), inference_has_own_cpus=False) == 0.0


def test_large_backlog_replays_within_the_window(mosquitto, subscriber, outbox, publisher) -> None:
    n = 20_000
    broker = mosquitto()
    sub = subscriber(broker, RESULT_TOPIC)
    outbox.append_many([(RESULT_TOPIC, payload(s), 1) for s in range(1, n + 1)])
    cfg = broker.mqtt_config(max_inflight=64)
    pub = publisher(cfg)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, pub.stats()["inflight"], len(pub.connection.client._out_messages))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        assert pub.flush(timeout=60), pub.stats()
    finally:
        stop.set()
        sampler.join()
    assert 0 < peak <= 64 + 8  # our window (+ status/stats room), not 20,000 messages in paho's memory
    sub.wait_for(lambda m: len(m) >= n, timeout=30)
    assert seqs(sub) == list(range(1, n + 1))


# -- TLS ---------------------------------------------------------------------------------------------------
def test_tls_broker(mosquitto, subscriber, outbox, publisher) -> None:
    broker = mosquitto(tls=True)
    sub = subscriber(broker, "edge/#")
    pub = publisher(broker.mqtt_config())
    for s in range(1, 6):
        pub.publish_result(RESULT_TOPIC, payload(s), qos=1)
    assert pub.flush(timeout=10), pub.stats()
    sub.wait_for(has_all(set(range(1, 6))), timeout=5)


def test_tls_with_client_certificate(mosquitto, subscriber, outbox, publisher) -> None:
    broker = mosquitto(tls=True, client_cert=True)
    sub = subscriber(broker, "edge/#")
    pub = publisher(broker.mqtt_config())
    pub.publish_result(RESULT_TOPIC, payload(1), qos=1)
    assert pub.flush(timeout=10), pub.stats()
    sub.wait_for(has_all({1}), timeout=5)


def test_tls_without_the_required_client_certificate_is_reported(mosquitto, outbox, publisher) -> None:
    broker = mosquitto(tls=True, client_cert=True)
    pub = publisher(broker.mqtt_config(tls=TlsConfig(ca_file=broker.tls.ca_cert)))
    pub.publish_result(RESULT_TOPIC, payload(1), qos=1)
    assert wait_until(lambda: pub.last_error is not None, 10), "last_error"
    assert f"broker 127.0.0.1:{broker.port} closed the connection before accepting it" in pub.last_error
    assert "cert_file/key_file" in pub.last_error
    assert pub.wait_stored(10)  # stored by the sender thread, which may come after the error
    assert not pub.connected and outbox.depth() == 1


def test_tls_with_the_wrong_ca_is_reported(mosquitto, outbox, publisher, tmp_path: Path) -> None:
    broker = mosquitto(tls=True)
    other = Mosquitto(tmp_path / "other-ca", tls=True)  # a different CA, never started
    cfg = broker.mqtt_config(tls=TlsConfig(ca_file=other.tls.ca_cert))
    pub = publisher(cfg)
    pub.publish_result(RESULT_TOPIC, payload(1), qos=1)
    assert wait_until(lambda: pub.last_error is not None, 10), "last_error"
    assert "TLS handshake" in pub.last_error and "mqtt.tls.ca_file" in pub.last_error
    assert pub.wait_stored(10)  # stored by the sender thread, which may come after the error
    assert not pub.connected and outbox.depth() == 1


def test_missing_tls_file_is_a_config_error(outbox, tmp_path: Path) -> None:
    cfg = MqttConfig(tls=TlsConfig(ca_file=tmp_path / "nope.crt"))
    with pytest.raises(ConfigError, match=r"mqtt\.tls\.ca_file: .*nope\.crt does not exist"):
        MqttPublisher(cfg, DEVICE, outbox)


def test_corrupt_tls_file_is_a_config_error(outbox, tmp_path: Path) -> None:
    bad = tmp_path / "bad.crt"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"mqtt\.tls"):
        MqttPublisher(MqttConfig(tls=TlsConfig(ca_file=bad)), DEVICE, outbox)


# -- passwords ---------------------------------------------------------------------------------------------
def test_password_file(mosquitto, subscriber, outbox, publisher, tmp_path: Path) -> None:
    broker = mosquitto(users={"observer": "watch", "agent": "s3cret"})
    sub = subscriber(broker, "edge/#", username="observer", password="watch")
    pw = tmp_path / "mqtt-password"
    pw.write_text("s3cret\n# anything after the first line is ignored\n")
    pub = publisher(broker.mqtt_config(username="agent", password_file=pw))
    pub.publish_result(RESULT_TOPIC, payload(1), qos=1)
    assert pub.flush(timeout=10), pub.stats()
    sub.wait_for(has_all({1}), timeout=5)


def test_password_credential_and_env(mosquitto, subscriber, outbox, publisher, tmp_path, monkeypatch) -> None:
    broker = mosquitto(users={"agent": "s3cret"})
    sub = subscriber(broker, "edge/#", username="agent", password="s3cret")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("s3cret")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    pub = publisher(broker.mqtt_config(username="agent", password_credential="mqtt-password"))
    pub.publish_result(RESULT_TOPIC, payload(1), qos=1)
    assert pub.flush(timeout=10), pub.stats()
    pub.stop(drain_timeout=1)
    monkeypatch.setenv("EDGE_MQTT_PW", "s3cret")
    pub2 = publisher(broker.mqtt_config(username="agent", password_env="EDGE_MQTT_PW"))
    pub2.publish_result(RESULT_TOPIC, payload(2), qos=1)
    assert pub2.flush(timeout=10), pub2.stats()
    sub.wait_for(has_all({1, 2}), timeout=5)


def test_wrong_password_is_reported_retried_and_loses_nothing(
    mosquitto, subscriber, outbox, publisher, tmp_path: Path
) -> None:
    broker = mosquitto(users={"observer": "watch", "agent": "right"})
    sub = subscriber(
        broker, "edge/#", username="observer", password="watch", client_id="obs", clean_session=False
    )
    pw = tmp_path / "pw"
    pw.write_text("wrong")
    pub = publisher(broker.mqtt_config(username="agent", password_file=pw))
    for s in range(1, 11):
        pub.publish_result(RESULT_TOPIC, payload(s), qos=1)
    assert wait_until(lambda: pub.last_error is not None, 10), "last_error"
    msg = pub.last_error
    # mosquitto 2 says "not authorized" for a wrong password; other brokers say "bad user name or password".
    assert f"broker 127.0.0.1:{broker.port} refused the connection: not authorized" in msg
    assert f"check mqtt.username ('agent') and mqtt.password_file ({pw})" in msg
    time.sleep(1.0)
    assert pub.wait_stored(10)
    assert not pub.connected and outbox.depth() == 10
    assert pub.stats()["connected"] is False
    # The admin fixes the broker side; the publisher, still retrying, gets in and delivers everything.
    broker.set_users({"observer": "watch", "agent": "wrong"})
    assert pub.flush(timeout=15), pub.stats()
    sub.wait_for(has_all(set(range(1, 11))), timeout=5)
    assert pub.connected and pub.last_error is None and pub.stats()["acked"] == 10


def test_missing_password_file_names_the_field(outbox, tmp_path: Path) -> None:
    cfg = MqttConfig(username="agent", password_file=tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"mqtt\.password_file: .*missing does not exist"):
        MqttPublisher(cfg, DEVICE, outbox)


def test_empty_password_file_names_the_field(outbox, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=r"mqtt\.password_file: .* is empty"):
        MqttPublisher(MqttConfig(username="agent", password_file=empty), DEVICE, outbox)


def test_missing_env_and_credential_name_the_field(outbox, monkeypatch) -> None:
    monkeypatch.delenv("EDGE_NO_SUCH_VAR", raising=False)
    with pytest.raises(ConfigError, match=r"mqtt\.password_env: environment variable EDGE_NO_SUCH_VAR"):
        MqttPublisher(MqttConfig(username="a", password_env="EDGE_NO_SUCH_VAR"), DEVICE, outbox)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError, match=r"mqtt\.password_credential: CREDENTIALS_DIRECTORY is not set"):
        MqttPublisher(MqttConfig(username="a", password_credential="pw"), DEVICE, outbox)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/nonexistent-creds")
    with pytest.raises(ConfigError, match=r"mqtt\.password_credential: credential 'pw' not found"):
        MqttPublisher(MqttConfig(username="a", password_credential="pw"), DEVICE, outbox)


def test_login_required_but_none_configured(mosquitto, outbox, publisher) -> None:
    broker = mosquitto(users={"agent": "s3cret"})
    pub = publisher(broker.mqtt_config())
    assert wait_until(lambda: pub.last_error is not None, 10), "last_error"
    assert "refused the connection" in pub.last_error and "set mqtt.username" in pub.last_error
    assert not pub.connected


# -- lifecycle edges ---------------------------------------------------------------------------------------
def test_stop_with_the_broker_unreachable_is_prompt_and_keeps_rows(outbox) -> None:
    cfg = MqttConfig(port=free_port(), reconnect_min_s=5, reconnect_max_s=30)
    pub = MqttPublisher(cfg, DEVICE, outbox)
    pub.start()
    for s in range(1, 6):
        pub.publish_result(RESULT_TOPIC, payload(s), qos=1)
    assert pub.flush(timeout=0.3) is False
    t0 = time.monotonic()
    pub.stop(drain_timeout=0.5)
    assert time.monotonic() - t0 < 5.0  # not stuck in paho's 5 s reconnect wait
    assert outbox.depth() == 5 and not pub.connected


def test_disconnect_callback_twice_then_recovery(mosquitto, subscriber, outbox, publisher) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.reasoncodes import ReasonCode

    broker = mosquitto(persistent=True)
    sub = subscriber(broker, "edge/#", client_id="observer", clean_session=False)
    pub = publisher(broker.mqtt_config())
    assert wait_until(lambda: pub.connected, 10), "connect"
    broker.stop(kill=False)
    assert wait_until(lambda: not pub.connected, 10), "the disconnect"
    rc = ReasonCode(mqtt.PacketTypes.DISCONNECT, identifier=0x80)
    flags = mqtt.DisconnectFlags(is_disconnect_packet_from_server=False)
    client = pub.connection.client
    client.on_disconnect(client, None, flags, rc, None)  # as if paho reported it again
    client.on_disconnect(client, None, flags, rc, None)
    assert not pub.connected and "lost the connection" in (pub.last_error or "")
    for s in range(1, 6):
        pub.publish_result(RESULT_TOPIC, payload(s), qos=1)
    broker.start()
    assert pub.flush(timeout=15), pub.stats()
    sub.wait_for(has_all(set(range(1, 6))), timeout=10)
    assert pub.stats()["reconnects"] == 1


def test_several_pipelines_publish_concurrently(mosquitto, subscriber, outbox, publisher) -> None:
    broker = mosquitto()
    sub = subscriber(broker, "edge/#")
    pub = publisher(broker.mqtt_config())
    names = [f"p{i}" for i in range(4)]

    def produce(name: str) -> None:
        counter = SeqCounter(outbox.path, name)
        topic = pub.topic(name, "result")
        for _ in range(300):
            s = counter.next()
            raw = result_payload(device=DEVICE, pipeline=name, seq=s, model_name="m", model_sha256=SHA,
                                 fields={"values": {"t": 1.0}}, latency_ms=LAT)  # fmt: skip
            pub.publish_result(topic, raw, qos=1)
        counter.close()

    threads = [threading.Thread(target=produce, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert pub.flush(timeout=20), pub.stats()
    msgs = sub.wait_for(lambda m: len(m) >= 1 + 4 * 300, timeout=15)  # status + results
    for name in names:
        got = [json.loads(p)["seq"] for t, p, _ in msgs if t == f"edge/{DEVICE}/{name}/result"]
        assert got == list(range(1, 301)), name  # per pipeline: complete and in seq order


def test_tls_insecure_skips_only_the_host_name_check(mosquitto, subscriber, outbox, publisher) -> None:
    broker = mosquitto(tls=True, server_san="DNS:broker.elsewhere.example")  # cert does not name 127.0.0.1
    strict = publisher(broker.mqtt_config())
    assert wait_until(lambda: strict.last_error is not None, 10), "last_error"
    assert "TLS handshake" in strict.last_error and not strict.connected
    strict.stop(drain_timeout=0)
    cfg = broker.mqtt_config(tls=TlsConfig(ca_file=broker.tls.ca_cert, insecure=True))
    lax = publisher(cfg)
    lax.publish_result(RESULT_TOPIC, payload(1), qos=1)
    assert lax.flush(timeout=10), lax.stats()


def test_results_handed_in_while_the_outbox_is_busy_are_stored_together_in_order(
    mosquitto, subscriber, outbox, publisher
) -> None:
    """The inference thread never waits for SQLite: results queue up while the sender thread writes, and
    the next write takes them all in one transaction, in order."""
    broker = mosquitto()
    sub = subscriber(broker, "edge/#")
    pub = publisher(broker.mqtt_config())
    assert wait_until(lambda: pub.connected, 10), "connect"
    batches: list[int] = []
    append_many = outbox.append_many
    outbox.append_many = lambda items: batches.append(len(items)) or append_many(items)  # type: ignore[method-assign]
    with outbox._lock:  # a slow disk: the sender is stuck in a write meanwhile
        started = time.monotonic()
        for s in range(1, 101):
            pub.publish_result(RESULT_TOPIC, payload(s), qos=1)
        handed_in = time.monotonic() - started
        time.sleep(0.2)
    pub.publish_result(RESULT_TOPIC, payload(500), qos=0)  # QoS 0: sent, not stored
    assert pub.flush(timeout=10), pub.stats()
    sub.wait_for(has_all({*range(1, 101), 500}), timeout=10)
    assert [s for s in seqs(sub) if s != 500] == list(range(1, 101))
    assert sum(batches) == 100 and len(batches) <= 2, batches
    assert handed_in < 0.2, f"publish_result waited for the outbox ({handed_in:.3f} s for 100 results)"


def test_acknowledged_rows_are_deleted_in_batches(mosquitto, subscriber, outbox, publisher) -> None:
    """Not one DELETE transaction (an SD-card write) per PUBACK: acked rows are deleted together, and
    flush() still returns as soon as everything is acknowledged."""
    broker = mosquitto()
    sub = subscriber(broker, RESULT_TOPIC)
    pub = publisher(broker.mqtt_config())
    assert wait_until(lambda: pub.connected, 10), "connect"
    deletes: list[int] = []
    ack_many = outbox.ack_many
    outbox.ack_many = lambda ids: deletes.append(len(ids)) or ack_many(ids)  # type: ignore[method-assign]
    for s in range(1, 401):
        pub.publish_result(RESULT_TOPIC, payload(s), qos=1)
        time.sleep(0.0005)  # a steady 2,000 results/s, each acknowledged on its own
    started = time.monotonic()
    assert pub.flush(timeout=10), pub.stats()
    assert time.monotonic() - started < 1.0
    sub.wait_for(has_all(set(range(1, 401))), timeout=10)
    assert sum(deletes) == 400 and outbox.depth() == 0
    assert len(deletes) <= 400 / 10, f"{len(deletes)} DELETE transactions for 400 rows"


def test_mqtt5_respects_the_brokers_receive_maximum(mosquitto, subscriber, outbox, publisher) -> None:
    """A v5 broker announcing Receive Maximum 10 would drop a client with 256 unacknowledged messages."""
    broker = mosquitto(extra_config=("max_inflight_messages 10",))
    sub = subscriber(broker, RESULT_TOPIC)
    outbox.append_many([(RESULT_TOPIC, payload(s), 1) for s in range(1, 2001)])
    pub = publisher(broker.mqtt_config(protocol="5", max_inflight=256))
    peak = 0
    deadline = time.monotonic() + 30
    while outbox.depth() > 0 and time.monotonic() < deadline:
        peak = max(peak, pub.stats()["inflight"])
        time.sleep(0.001)
    assert pub.flush(timeout=10), pub.stats()
    assert 0 < peak <= 8
    assert pub.stats()["reconnects"] == 0
    sub.wait_for(lambda m: len(m) >= 2000, timeout=10)
    assert seqs(sub) == list(range(1, 2001))


def test_invalid_topic_is_refused_before_the_outbox(outbox) -> None:
    from edge_agent.errors import DataError

    pub = MqttPublisher(MqttConfig(), DEVICE, outbox)
    with pytest.raises(DataError, match=r"topic 'edge/\+/result'"):
        pub.publish_result("edge/+/result", b"{}", qos=1)
    assert outbox.depth() == 0
