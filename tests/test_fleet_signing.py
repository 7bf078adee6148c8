"""Keys and signatures: keygen file modes, refusal to overwrite, round trip, trusted-key directory formats."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from edge_agent.errors import ConfigError
from edge_agent.fleet.signing import (
    canonical_bytes,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    load_trusted_keys,
    raw_public_bytes,
    sign,
    signature_valid,
)


def test_keygen_modes_and_refuses_to_overwrite(tmp_path: Path) -> None:
    keydir = tmp_path / "operator" / "keys"  # made with its parents
    private, public, kid = generate_keypair(keydir)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert stat.S_IMODE(keydir.stat().st_mode) == 0o700
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert len(kid) == 16
    before = private.read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_keypair(keydir)
    assert private.read_bytes() == before
    public.unlink()  # only the public half gone: still refuses (the private key would be replaced)
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_keypair(keydir)
    assert private.read_bytes() == before
    (tmp_path / "a-file").write_text("x")  # a folder that cannot be made: one line naming it, no traceback
    with pytest.raises(ConfigError, match=r"^\S*a-file: cannot create the key \(File exists\); give a new"):
        generate_keypair(tmp_path / "a-file")


def test_sign_verify_round_trip_and_tamper(tmp_path: Path) -> None:
    private, public, kid = generate_keypair(tmp_path)
    key = load_private_key(private)
    pub = load_public_key(public.read_bytes())
    signed = sign({"b": 1, "a": {"z": [1.5, "é"]}, "signature": "stale"}, key)
    assert signed["signer"] == kid == key_id(pub)
    assert signature_valid(signed, pub)
    assert canonical_bytes(signed) == '{"a":{"z":[1.5,"é"]},"b":1,"signer":"%s"}'.encode() % kid.encode()
    assert not signature_valid({**signed, "b": 2}, pub)
    assert not signature_valid({**signed, "signature": "AAAA"}, pub)
    # Not base64 at all, and the right signature with a stray character: refused, never let through by
    # a decoder that skips what it cannot read.
    assert not signature_valid({**signed, "signature": "not base64!"}, pub)
    good = signed["signature"]
    assert not signature_valid({**signed, "signature": f"{good[:8]}*{good[8:]}"}, pub)
    assert not signature_valid({k: v for k, v in signed.items() if k != "signature"}, pub)
    with pytest.raises(ValueError):  # NaN has no canonical JSON: it is never signed
        sign({"x": float("nan")}, key)
    other = generate_keypair(tmp_path / "other")[1]
    assert not signature_valid(signed, load_public_key(other.read_bytes()))


def test_trusted_keys_pem_and_base64(tmp_path: Path) -> None:
    _, public, kid = generate_keypair(tmp_path / "a")
    _, public_b, kid_b = generate_keypair(tmp_path / "b")
    trusted = tmp_path / "trusted"
    assert load_trusted_keys(trusted) == {}  # missing dir: remote deployment off, not an error
    trusted.mkdir()
    (trusted / "alice.pub").write_bytes(public.read_bytes())
    raw = raw_public_bytes(load_public_key(public_b.read_bytes()))
    (trusted / "bob.pub").write_text(base64.b64encode(raw).decode() + "\n")
    (trusted / "README").write_text("not a key, and not *.pub: ignored")
    assert set(load_trusted_keys(trusted)) == {kid, kid_b}
    (trusted / "typo.pub").write_text("hello")
    not_a_key = r"typo\.pub is not an Ed25519 public key"
    with pytest.raises(ConfigError, match=not_a_key + r" \(neither PEM nor base64\)"):
        load_trusted_keys(trusted)
    (trusted / "typo.pub").write_text(base64.b64encode(raw[:16]).decode())
    with pytest.raises(ConfigError, match="base64 decodes to 16 bytes, an Ed25519 key has 32"):
        load_trusted_keys(trusted)
    text = base64.b64encode(raw).decode()
    (trusted / "typo.pub").write_text(f"{text[:20]}*{text[20:]}")
    with pytest.raises(ConfigError, match="neither PEM nor base64"):  # a stray character is not skipped
        load_trusted_keys(trusted)
    (trusted / "typo.pub").write_bytes(_rsa_public_pem())
    with pytest.raises(ConfigError, match=not_a_key + r" \(PEM, but of another algorithm\)"):
        load_trusted_keys(trusted)


def _rsa_public_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_private_key_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_private_key(tmp_path / "nope.key")
    (tmp_path / "bad.key").write_text("garbage")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        load_private_key(tmp_path / "bad.key")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "rsa.key").write_bytes(pem)
    with pytest.raises(
        ConfigError, match=r"rsa\.key is not an Ed25519 key; make one with  edge-fleet keygen"
    ):
        load_private_key(tmp_path / "rsa.key")
