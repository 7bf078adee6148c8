"""A stream URL's login: the user stays in the URL, the password is put in when the camera opens, and logs
show the URL with any password as ``***``. The config is world-readable (the service runs as a dynamic user)
and the journal is read by more people still, so a password comes from a credential, a file or the
environment (``edge_agent.credentials``), never from what is printed."""

from __future__ import annotations

import re
import urllib.parse

_SCHEME = r"[a-zA-Z][a-zA-Z0-9+.-]*://"
# rtsp://user@host/...: the login (no '/' before its '@')
_LOGIN = re.compile(rf"^({_SCHEME})([^/@]+)@")
# rtsp://user:secret@host/...: the password, up to the last '@' before the path
_PASSWORD = re.compile(rf"^({_SCHEME}[^/:@]*):[^/]*@")
# ...?user=admin&pwd=secret: cameras that take their login in the query
_QUERY_SECRET = re.compile(r"([?&;](?:password|passwd|pass|pwd|token|key|auth|secret)=)[^&;#]*", re.I)


def shown_url(url: str | int) -> str:
    """The URL as logs and ``check`` show it: a password in its login or a ``password=``/``pwd=``/``token=``
    query value becomes ``***``; a device or file path is shown as it is."""
    text = str(url)
    if not re.match(_SCHEME, text):
        return text
    return _QUERY_SECRET.sub(r"\1***", _PASSWORD.sub(r"\1:***@", text))


def login_problem(url: str | int, field: str) -> str | None:
    """Why ``field`` (a password_* key) cannot give this URL's password, or None when it can: the URL must
    be a stream's with a user and no password of its own."""
    login = _LOGIN.match(str(url))
    if login is None:
        return (
            f"{field} is the password of a stream's login: put the user name in the url "
            "(rtsp://USER@host/path), the password comes from here"
        )
    if ":" in login.group(2):
        return f"the url has a password already: take it out of the url, {field} gives it"
    return None


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` in its login, percent-encoded (FFmpeg decodes it: measured with HTTP Basic
    and a password of '@', '/', ':' and '%')."""
    encoded = urllib.parse.quote(password, safe="")
    return _LOGIN.sub(lambda m: f"{m.group(1)}{m.group(2)}:{encoded}@", url, count=1)
