"""A private mosquitto on a free loopback port (the tests' wrapper), and a recording subscriber
(``mosquitto_sub``, in C, so the measuring side costs the 2-core machine next to nothing) that stamps every
message with its receive time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# One mosquitto wrapper for tests and benchmarks: the tests' one is exercised by every test run, and already
# knows restarts, passwords, ACLs and TLS. Needs the dev extra (pytest), which scripts/bench installs.
from tests.fixtures.broker import Mosquitto, free_port  # noqa: E402

__all__ = ["Broker", "Received", "Recorder", "free_port", "read_records"]


class Broker(Mosquitto):
    """The tests' mosquitto with a benchmark's settings: no persistence and no queue limits (a benchmark must
    not lose what it counts, as in the tests), TCP_NODELAY and no inflight limit on the broker's side."""

    def __init__(self, work: Path) -> None:
        super().__init__(work / "broker", extra_config=("set_tcp_nodelay true", "max_inflight_messages 0"))

    def start(self, timeout: float = 10.0) -> Broker:
        if not Path(shutil.which("mosquitto") or "/usr/sbin/mosquitto").exists():
            raise RuntimeError("mosquitto is not installed: apt-get install mosquitto mosquitto-clients")
        super().start(timeout)
        return self

    def stop(self, kill: bool = False) -> None:
        super().stop(kill=kill)

    @property
    def proc(self) -> subprocess.Popen | None:
        """The running mosquitto process (for its CPU time)."""
        return self._proc if self.running else None


@dataclass(frozen=True)
class Received:
    recv_at: float  # time.time() when mosquitto_sub got the message
    topic: str
    payload: dict


class Recorder:
    """``mosquitto_sub -F '%U %t %p'`` (receive time as a Unix timestamp with nanoseconds, topic, payload)
    writing to a file; read back after the run. QoS 1 on the subscription so nothing is dropped."""

    def __init__(self, broker: Broker, topics: list[str], path: Path) -> None:
        self.broker, self.topics, self.path = broker, topics, path
        self.proc: subprocess.Popen | None = None

    def start(self) -> Recorder:
        exe = shutil.which("mosquitto_sub")
        if exe is None:
            raise RuntimeError("mosquitto_sub is not installed: apt-get install mosquitto-clients")
        cmd = [exe, "-h", "127.0.0.1", "-p", str(self.broker.port), "-q", "1", "-F", "%U %t %p", "--nodelay"]
        for t in self.topics:
            cmd += ["-t", t]
        self._out = self.path.open("wb")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.PIPE)
        time.sleep(0.2)  # its SUBSCRIBE must reach the broker before anything is published
        if self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto_sub exited: {self.proc.stderr.read().decode()[:300]}")
        return self

    def stop(self) -> list[Received]:
        if self.proc is not None:
            time.sleep(0.2)  # last messages in flight
            self.proc.terminate()
            self.proc.wait(5)
            self._out.close()
            self.proc = None
        return read_records(self.path)


def read_records(path: Path) -> list[Received]:
    out: list[Received] = []
    for line in path.read_bytes().splitlines():
        parts = line.split(b" ", 2)
        if len(parts) != 3:
            continue
        try:
            payload = json.loads(parts[2])
        except ValueError:
            payload = {"_text": parts[2].decode(errors="replace")}
        if not isinstance(payload, dict):
            payload = {"_value": payload}
        out.append(Received(float(parts[0]), parts[1].decode(), payload))
    return out
