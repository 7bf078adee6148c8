"""A private mosquitto on a free loopback port, and a recording subscriber (``mosquitto_sub``, in C, so the
measuring side costs the 2-core machine next to nothing) that stamps every message with its receive time."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with code {proc.returncode} at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


class Broker:
    """mosquitto with no persistence and no queue limits (a benchmark must not lose what it counts)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise RuntimeError("mosquitto is not installed: apt-get install mosquitto mosquitto-clients")
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence false",
            "max_queued_messages 0",
            "set_tcp_nodelay true",
            "max_inflight_messages 0",
            "log_type error",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to 'mosquitto' and cannot read our folder
        conf = self.work / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        log = (self.work / "mosquitto.log").open("wb")
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        _wait_port(self.port, 5.0, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


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
