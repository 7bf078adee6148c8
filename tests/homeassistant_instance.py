"""A real Home Assistant (2024.1, the venv ``scripts/ha-venv`` builds) for the discovery test, spoken to only
through its own REST API.

Nothing goes through its UI: the config dir is written before start. ``configuration.yaml`` enables only
``http`` + ``api`` (bound to 127.0.0.1 on a free port); ``.storage/core.config_entries`` holds an MQTT entry
for the test broker (as the UI would have saved it; discovery on, prefix ``homeassistant``);
``.storage/auth`` holds one owner with a long-lived access token whose JWT is signed here with the token's
key, the way Home Assistant signs them (HS256, ``iss`` = the refresh token's id). Home Assistant runs with
``--skip-pip``: everything it needs is already in its venv.

    ha = HomeAssistant(venv, tmp_path / "ha", broker).start()
    ha.state("sensor.testdev_cam_label")          # the REST state object, or None
    ha.template("{{ device_attr(device_id('sensor.x'), 'name') }}")
    ha.stop()
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tests.fixtures.broker import Mosquitto, free_port

REPO = Path(__file__).resolve().parents[1]
VERSION = "2024.1.6"


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _jwt_hs256(claims: dict[str, Any], key: str) -> str:
    head = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64url(json.dumps(claims).encode())
    sig = hmac.new(key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64url(sig)}"


def _store(key: str, data: dict[str, Any], version: int = 1, minor: int = 1) -> str:
    return json.dumps({"version": version, "minor_version": minor, "key": key, "data": data}, indent=1)


def build_venv(env: dict[str, str] | None = None) -> Path:
    """``scripts/ha-venv`` (builds once, minutes; then instant); the venv's path. Raises ``LookupError`` with
    the script's reason when no Python 3.11 exists here, RuntimeError when the build failed."""
    proc = subprocess.run([str(REPO / "scripts" / "ha-venv")], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=1800)  # fmt: skip
    if proc.returncode == 3:
        raise LookupError(proc.stderr.strip())
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/ha-venv failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


class HomeAssistant:
    def __init__(self, venv: Path, config_dir: Path, broker: Mosquitto) -> None:
        self.venv = venv
        self.dir = config_dir
        self.broker = broker
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = config_dir / "home-assistant.log"
        self.proc: subprocess.Popen | None = None
        self.token = ""
        self.startup_s: float | None = None

    # -- config dir ----------------------------------------------------------------------------------------
    def _write_config(self) -> None:
        storage = self.dir / ".storage"
        storage.mkdir(parents=True, exist_ok=True)
        (self.dir / "configuration.yaml").write_text(
            "homeassistant:\n  name: edge-agent test\n  latitude: 0\n  longitude: 0\n  elevation: 0\n"
            "  unit_system: metric\n  time_zone: UTC\n  currency: EUR\n  country: DE\n"
            f"http:\n  server_host: 127.0.0.1\n  server_port: {self.port}\napi:\n"
            "logger:\n  default: warning\n  logs:\n    homeassistant.components.mqtt: info\n"
        )
        entry = {
            "entry_id": uuid.uuid4().hex, "version": 1, "minor_version": 1, "domain": "mqtt",
            "title": self.broker.host, "source": "user", "unique_id": None, "disabled_by": None,
            "pref_disable_new_entities": False, "pref_disable_polling": False, "options": {},
            "data": {"broker": self.broker.host, "port": self.broker.port, "discovery": True,
                     "discovery_prefix": "homeassistant"},
        }  # fmt: skip
        (storage / "core.config_entries").write_text(_store("core.config_entries", {"entries": [entry]}))
        user_id, token_id, jwt_key = uuid.uuid4().hex, uuid.uuid4().hex, secrets.token_hex(64)
        now = datetime.now(timezone.utc)
        auth = {
            "users": [{"id": user_id, "group_ids": ["system-admin"], "is_owner": True, "is_active": True,
                       "name": "test", "system_generated": False, "local_only": False}],
            "groups": [{"id": "system-admin"}, {"id": "system-users"}, {"id": "system-read-only"}],
            "credentials": [],
            "refresh_tokens": [{"id": token_id, "user_id": user_id, "client_id": None, "client_name": "test",
                                "client_icon": None, "token_type": "long_lived_access_token",
                                "created_at": now.isoformat(), "access_token_expiration": 86400.0 * 365,
                                "token": secrets.token_hex(64), "jwt_key": jwt_key, "last_used_at": None,
                                "last_used_ip": None, "version": VERSION}],
        }  # fmt: skip
        (storage / "auth").write_text(_store("auth", auth))
        iat = int(now.timestamp())
        self.token = _jwt_hs256({"iss": token_id, "iat": iat, "exp": iat + 86400 * 365}, jwt_key)

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self, timeout: float = 300.0) -> HomeAssistant:
        """Start it and wait until its API answers and MQTT is set up (``mqtt`` among its components)."""
        self._write_config()
        t0 = time.monotonic()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(self.venv / "bin" / "hass"), "-c", str(self.dir), "--skip-pip", "--log-no-color"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = t0 + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Home Assistant exited ({self.proc.returncode}):\n{self.log()[-4000:]}")
            if "Setup failed for 'mqtt'" in self.log():
                raise RuntimeError(f"Home Assistant could not set up MQTT:\n{self.log()[-4000:]}")
            try:
                if "mqtt" in self.get("/api/config").get("components", []):
                    break
            except (OSError, urllib.error.URLError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"Home Assistant not up after {timeout} s:\n{self.log()[-4000:]}")
            time.sleep(0.5)
        self.startup_s = time.monotonic() - t0
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- REST ----------------------------------------------------------------------------------------------
    def _request(self, path: str, body: dict[str, Any] | None = None) -> bytes:
        req = urllib.request.Request(
            self.url + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.read()

    def get(self, path: str) -> Any:
        return json.loads(self._request(path))

    def state(self, entity_id: str) -> dict[str, Any] | None:
        try:
            return self.get(f"/api/states/{entity_id}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def states(self) -> dict[str, dict[str, Any]]:
        return {s["entity_id"]: s for s in self.get("/api/states")}

    def template(self, template: str) -> str:
        return self._request("/api/template", {"template": template}).decode()

    def wait_for(self, predicate: Any, what: str, timeout: float = 60.0) -> Any:
        """Poll ``predicate(self)`` until it returns something truthy; fail with ``what`` and the log."""
        deadline = time.monotonic() + timeout
        while True:
            got = predicate(self)
            if got:
                return got
            if time.monotonic() > deadline:
                tail = self.log()[-4000:]
                raise AssertionError(f"Home Assistant: {what} not within {timeout} s; log:\n{tail}")
            time.sleep(0.25)
