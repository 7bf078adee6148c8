"""Ed25519 signatures over canonical JSON, key ids, key files.

Canonical bytes: the JSON object *without* its ``signature`` field, dumped with sorted keys, no whitespace,
UTF-8, NaN/Infinity refused. The device canonicalises the object it parsed from the wire (never a pydantic
re-dump, which could turn ``60`` into ``60.0``), so both sides hash the same bytes.

Key files: the private key is PKCS#8 PEM (unencrypted; mode 0600, created with O_EXCL so it is never
overwritten); public keys are SubjectPublicKeyInfo PEM. A trusted-keys directory holds ``*.pub`` files,
each PEM or one line of base64 of the raw 32-byte key. The key id is the first 16 hex digits of the
sha256 of the raw public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError, missing_extra

PRIVATE_NAME = "fleet.key"
PUBLIC_NAME = "fleet.pub"


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        raise missing_extra("cryptography", "fleet", exc) from None
    return serialization, ed25519


def canonical_bytes(obj: dict[str, Any]) -> bytes:
    """The bytes that are signed: ``obj`` minus ``signature``, sorted keys, no whitespace, UTF-8."""
    body = {k: v for k, v in obj.items() if k != "signature"}
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def raw_public_bytes(public_key: Any) -> bytes:
    serialization, _ = _crypto()
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Any) -> str:
    return hashlib.sha256(raw_public_bytes(public_key)).hexdigest()[:16]


def sign(obj: dict[str, Any], private_key: Any) -> dict[str, Any]:
    """A copy of ``obj`` with ``signer`` (the key id) set and ``signature`` (base64) added."""
    body = {k: v for k, v in obj.items() if k != "signature"}
    body["signer"] = key_id(private_key.public_key())
    body["signature"] = base64.b64encode(private_key.sign(canonical_bytes(body))).decode()
    return body


def signature_valid(obj: dict[str, Any], public_key: Any) -> bool:
    try:
        sig = base64.b64decode(str(obj.get("signature", "")), validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        public_key.verify(sig, canonical_bytes(obj))
    except Exception:  # cryptography's InvalidSignature, or a signature of the wrong length
        return False
    return True


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (refusing an existing one) with ``mode`` from the start, and fsync it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise ConfigError(
            f"{path} already exists; refusing to overwrite a key (move it away first)"
        ) from None
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_keypair(keydir: Path) -> tuple[Path, Path, str]:
    """Write ``fleet.key`` (0600) and ``fleet.pub`` into ``keydir``; returns (private, public, key id)."""
    serialization, ed25519 = _crypto()
    private_path, public_path = keydir / PRIVATE_NAME, keydir / PUBLIC_NAME
    for p in (private_path, public_path):
        if p.exists():
            raise ConfigError(f"{p} already exists; refusing to overwrite a key (move it away first)")
    key = ed25519.Ed25519PrivateKey.generate()
    try:
        keydir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_new(
            private_path,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            0o600,
        )
        _write_new(
            public_path,
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            0o644,
        )
    except OSError as exc:
        where = exc.filename or keydir
        raise ConfigError(f"{where}: cannot create the key ({exc.strerror}); give a new folder") from None
    return private_path, public_path, key_id(key.public_key())


def load_private_key(path: Path) -> Any:
    serialization, ed25519 = _crypto()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"--key: cannot read {path}: {exc.strerror}; make one with  edge-fleet keygen DIR"
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--key: {path} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"--key: {path} is not an Ed25519 key; make one with  edge-fleet keygen DIR")
    return key


def load_public_key(data: bytes) -> Any:
    """A public key from PEM or from one line of base64 of the raw 32 bytes; ValueError if neither."""
    serialization, ed25519 = _crypto()
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(text)
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise ValueError("PEM, but of another algorithm")
        return key
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("neither PEM nor base64") from None
    if len(raw) != 32:
        raise ValueError(f"base64 decodes to {len(raw)} bytes, an Ed25519 key has 32")
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


def load_trusted_keys(directory: Path) -> dict[str, Any]:
    """Key id -> public key for every ``*.pub`` in ``directory``; {} when it is missing or empty.

    A file that is not a key raises ConfigError naming it: a typo must not silently drop an operator.
    """
    if not directory.is_dir():
        return {}
    keys: dict[str, Any] = {}
    for path in sorted(directory.glob("*.pub")):
        try:
            key = load_public_key(path.read_bytes()[:8192])
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"fleet.trusted_keys_dir: {path} is not an Ed25519 public key ({exc}); "
                "copy the fleet.pub that  edge-fleet keygen  wrote"
            ) from None
        keys[key_id(key)] = key
    return keys


def remote_deploy_status(enabled: bool, trusted_keys: dict[str, Any], keys_dir: Path) -> tuple[bool, str]:
    """(on, why) for the daemon to log once at start."""
    if not enabled:
        return False, "remote deployment is off (fleet.enabled: false)"
    if not trusted_keys:
        return False, (
            f"remote deployment is off: no trusted keys in {keys_dir} "
            "(copy an operator's fleet.pub there to turn it on)"
        )
    return (
        True,
        f"remote deployment is on: {len(trusted_keys)} trusted key(s) ({', '.join(sorted(trusted_keys))})",
    )
