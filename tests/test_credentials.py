"""Where a password comes from (``edge_agent.credentials``) and how a stream URL carries it
(``edge_agent.sources.stream_login``): every way it can be missing says which key and what to do; outside
the service a credential is read from the file the unit or its drop-ins name; the password put in a URL is
percent-encoded and shown as ``***``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge_agent.credentials import PasswordFields, resolve_password, unit_credential
from edge_agent.errors import ConfigError
from edge_agent.sources.stream_login import login_problem, shown_url, with_password


def resolve(**fields: object) -> str | None:
    return resolve_password(PasswordFields(**fields), "camera")


@pytest.mark.parametrize("content", ["", "\n", "   \nsecond line\n"])
def test_an_empty_password_file_names_the_key_and_what_to_write(tmp_path: Path, content: str) -> None:
    path = tmp_path / "pw"
    path.write_text(content)
    with pytest.raises(ConfigError, match=rf"^camera\.password_file: {re.escape(str(path))} is empty; put "):
        resolve(password_file=path)


def test_a_password_file_that_is_missing_or_unreadable_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        resolve(password_file=tmp_path / "nope")
    assert str(missing.value) == (
        f"camera.password_file: {tmp_path / 'nope'} does not exist; create it with the password on its first "
        "line (chmod 600), or fix the path"
    )
    with pytest.raises(
        ConfigError, match=rf"^camera\.password_file: cannot read {re.escape(str(tmp_path))}: "
    ):
        resolve(password_file=tmp_path)  # a folder
    (tmp_path / "pw").write_text("  s3cret  \nignored\n")
    assert resolve(password_file=tmp_path / "pw") == "s3cret"


def test_a_missing_environment_variable_says_how_to_set_it(monkeypatch) -> None:
    monkeypatch.delenv("EDGE_TEST_NO_PW", raising=False)
    with pytest.raises(
        ConfigError, match=r"\(e\.g\. EnvironmentFile= in the systemd unit\) or use password_file"
    ):
        resolve(password_env="EDGE_TEST_NO_PW")
    monkeypatch.setenv("EDGE_TEST_NO_PW", " pw ")
    assert resolve(password_env="EDGE_TEST_NO_PW") == "pw"


def test_under_the_service_its_credentials_directory_wins_over_the_unit(tmp_path: Path, monkeypatch) -> None:
    """``check`` reads the file the unit names only outside the service; inside it (CREDENTIALS_DIRECTORY
    set) the credential is what systemd loaded."""
    unit = tmp_path / "edge-agent.service"
    (tmp_path / "on-disk").write_text("from-the-unit\n")
    unit.write_text(f"[Service]\nLoadCredential=cam:{tmp_path / 'on-disk'}\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "cam").write_text("from-systemd\n")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert resolve_password(PasswordFields(password_credential="cam"), "camera", unit) == "from-the-unit"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert resolve_password(PasswordFields(password_credential="cam"), "camera", unit) == "from-systemd"


def test_a_credential_is_found_in_a_drop_in_even_without_the_unit_file(tmp_path: Path) -> None:
    """``systemctl edit`` writes drop-ins beside where the unit would be; a path with a ':' is kept whole."""
    unit = tmp_path / "edge-agent.service"  # not there: the unit lives elsewhere, its drop-in here
    drop_ins = tmp_path / "edge-agent.service.d"
    drop_ins.mkdir()
    (drop_ins / "10-first.conf").write_text("[Service]\nLoadCredential=cam:/etc/edge-agent/old\n")
    (drop_ins / "override.conf").write_text("[Service]\nLoadCredential=cam:/etc/edge-agent/cam:door\n")
    assert unit_credential("cam", unit) == Path("/etc/edge-agent/cam:door")  # the last one wins
    assert unit_credential("other", unit) is None


def test_a_stream_login_takes_its_password_percent_encoded_and_shows_it_hidden() -> None:
    url = with_password("rtsp://admin@192.168.1.20/stream1", "X@/:%y")
    assert url == "rtsp://admin:X%40%2F%3A%25y@192.168.1.20/stream1"
    assert shown_url(url) == "rtsp://admin:***@192.168.1.20/stream1"
    assert shown_url("http://cam/snap?user=a&PWD=s3cret&x=1") == "http://cam/snap?user=a&PWD=***&x=1"
    assert shown_url("/dev/video0") == "/dev/video0"
    assert login_problem("rtsp://admin@cam/x", "password_file") is None
    no_user = login_problem("rtsp://cam/x", "password_file")
    assert no_user is not None and "put the user name in the url (rtsp://USER@host/path)" in no_user
    assert "take it out of the url" in (login_problem("rtsp://admin:pw@cam/x", "password_env") or "")
