"""Output files: checked for writability before any work, written to temp files and renamed, so a
failed or interrupted run never leaves a half-written model or a manifest that does not match it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from edge_agent.errors import ConfigError


def check_writable(path: Path) -> None:
    """ConfigError naming the path unless a file can be created beside ``path`` (tried, not guessed)."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ConfigError(f"-o {path}: is a directory; give a file name such as {path / 'model.tflite'}")
    if not parent.exists():
        raise ConfigError(f"-o {path}: directory {parent} does not exist; create it first")
    if not parent.is_dir():
        raise ConfigError(f"-o {path}: {parent} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
    except OSError as exc:
        raise ConfigError(
            f"-o {path}: cannot write in {parent} ({exc.strerror}); choose another output path"
        ) from None
    os.close(fd)
    os.unlink(probe)


def write_files(files: dict[Path, bytes]) -> None:
    """Write every file to a temp file beside it, then rename them all into place (in the given order)."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        for tmp, path in temps:
            os.replace(tmp, path)
    except OSError as exc:
        for tmp, _ in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise ConfigError(f"cannot write {exc.filename or 'the output'}: {exc.strerror}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
