"""Where a password comes from, kept out of the config: a file, an environment variable or a systemd
credential (``LoadCredential=``). The config is world-readable (the service runs as a dynamic user), so the
MQTT login and a camera's login both name their password this way (``PasswordFields``) instead of holding it.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field

from edge_agent.errors import ConfigError


class PasswordFields(BaseModel):
    """The three ways to give a password; at most one may be set (``given_password_fields``)."""

    password_file: Path | None = Field(default=None, description="File whose first line is the password.")
    password_env: str | None = Field(default=None, description="Environment variable holding the password.")
    password_credential: str | None = Field(
        default=None, description="Name of a systemd credential (LoadCredential=) holding the password."
    )

    def given_password_fields(self) -> list[str]:
        """The password fields set; more than one is an error (raised by the caller's validator)."""
        given = [n for n in ("password_file", "password_env", "password_credential") if getattr(self, n)]
        if len(given) > 1:
            raise ValueError(
                f"give only one of password_file, password_env, password_credential (got {given})"
            )
        return given


def _first_line(text: str) -> str:
    lines = text.splitlines()
    return lines[0].strip() if lines else ""


def unit_credential(name: str, unit: Path) -> Path | None:
    """Where a systemd unit loads credential ``name`` from (``LoadCredential=name:/path``), in the unit or
    its drop-ins (``<unit>.d/*.conf``, what ``systemctl edit`` writes; the last one wins); None if not."""
    found: Path | None = None
    for file in [unit, *sorted(unit.with_name(unit.name + ".d").glob("*.conf"))]:
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, value = line.partition("=")
            cred, sep, path = value.partition(":")
            if key.strip() == "LoadCredential" and sep and cred.strip() == name:
                found = Path(path.strip())
    return found


def resolve_password(cfg: PasswordFields, field_prefix: str = "mqtt", unit: Path | None = None) -> str | None:
    """The password from password_file, password_env or password_credential; None when none is set.

    ``unit``: outside the service (no ``CREDENTIALS_DIRECTORY``), read a credential from the file that this
    systemd unit's ``LoadCredential=`` names, as the service would see it (``edge-agent probe`` does, as
    root). Raises ConfigError naming the field when the file, variable or credential is missing.
    """
    cred = cfg.password_credential
    if cred is not None and unit is not None and not os.environ.get("CREDENTIALS_DIRECTORY"):
        path = unit_credential(cred, unit)
        if path is None:
            raise ConfigError(
                f"credential {cred!r} is not in {unit} ({field_prefix}.password_credential needs "
                f"LoadCredential={cred}:/path/to/password there)"
            )
        try:
            return _first_line(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(
                f"{field_prefix}.password_credential: cannot read {path} ({exc.strerror}), which "
                f"LoadCredential={cred} in {unit} names: systemd reads it as root, so check as root (sudo)"
            ) from None
    if cfg.password_file is not None:
        path = Path(cfg.password_file)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                f"{field_prefix}.password_file: {path} does not exist; create it with the password "
                "on its first line (chmod 600), or fix the path"
            ) from None
        except OSError as exc:
            raise ConfigError(f"{field_prefix}.password_file: cannot read {path}: {exc.strerror}") from None
        password = _first_line(text)
        if not password:
            raise ConfigError(
                f"{field_prefix}.password_file: {path} is empty; put the password on its first line"
            )
        return password
    if cfg.password_env is not None:
        value = os.environ.get(cfg.password_env)
        if value is None:
            raise ConfigError(
                f"{field_prefix}.password_env: environment variable {cfg.password_env} is not set; set it "
                "(e.g. EnvironmentFile= in the systemd unit) or use password_file"
            )
        return value.strip()
    if cfg.password_credential is not None:
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if not cred_dir:
            raise ConfigError(
                f"{field_prefix}.password_credential: CREDENTIALS_DIRECTORY is not set, so credential "
                f"{cfg.password_credential!r} is unavailable; run under systemd with "
                f"LoadCredential={cfg.password_credential}:/path/to/password, or use password_file"
            )
        path = Path(cred_dir) / cfg.password_credential
        try:
            return _first_line(path.read_text(encoding="utf-8"))
        except OSError:
            raise ConfigError(
                f"{field_prefix}.password_credential: credential {cfg.password_credential!r} not found in "
                f"{cred_dir}; check LoadCredential={cfg.password_credential}:... in the systemd unit"
            ) from None
    return None
