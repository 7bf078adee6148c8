"""Why a device node that is there cannot be opened, and what to do about it.

OpenCV says only that a camera did not open, and an errno alone ("Permission denied") leaves the user to
guess between a group the account lacks, a service's or a container's device policy, another program
holding the device and a camera that went away. Each has its own fix; the message names it.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat

# what the shipped unit gives its DynamicUser (SupplementaryGroups=); a device of another group needs a line
SERVICE_GROUPS = ("video", "plugdev", "dialout")
# the errnos ``explain`` says more about than their names do
EXPLAINED_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EBUSY, errno.ENXIO, errno.ENODEV})


def open_problem(path: str) -> str | None:
    """None when this process can open ``path`` now (read and write, without blocking); otherwise why not
    and what to do. Opening a V4L2 node this way starts no streaming: only a camera's node may be tried
    (a serial port's DTR line would reset the board on it: use ``access_problem`` for those)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        return explain(path, exc.errno)
    os.close(fd)
    return None


def camera_open_problem(path: str) -> str:
    """Why OpenCV could not open the camera node ``path``, which is there. When the node opens for us too,
    what keeps the video away: V4L2 lets a second process open a camera another one streams from and
    refuses only its stream, and a UVC camera's second node carries metadata."""
    why = open_problem(path)
    if why is not None:
        return why
    return (
        f"{path} opens but OpenCV gets no video from it: another program may be streaming from the "
        f"camera (fuser -v {path} names it), or it is not a capture node (a camera's second node carries "
        "metadata; edge-agent probe lists the capture nodes)"
    )


def access_problem(path: str) -> str | None:
    """Like ``open_problem`` from the permission bits alone, without opening anything: for ``check``."""
    if not os.path.exists(path) or os.access(path, os.R_OK | os.W_OK):
        return None
    return explain(path, errno.EACCES)


def explain(path: str, code: int | None) -> str:
    """The reason an open of ``path`` failed with ``code`` (an errno), with the fix."""
    if code == errno.EACCES:
        return _permission_denied(path)
    if code == errno.EPERM:
        return (
            f"{path}: refused by a device policy (EPERM), not by file permissions. As a systemd service: the "
            "unit allows a device group (DeviceAllow=char-video4linux, char-ttyUSB ...) only if its driver "
            "was loaded when the service started, so a device plugged in later may be refused: "
            "sudo systemctl restart edge-agent lets it in, and /etc/modules-load.d/edge-agent.conf (written "
            "by scripts/install) loads the drivers at boot; a device of another kind needs a DeviceAllow= "
            f"line. In a container: pass the device (docker run --device {path})"
        )
    if code == errno.EBUSY:
        return f"{path}: busy: another program is using it (fuser -v {path} names it)"
    if code in (errno.ENXIO, errno.ENODEV):
        return (
            f"{path}: no device answers behind this node: it was unplugged or its driver is not loaded "
            "(edge-agent probe lists what is there)"
        )
    if code == errno.ENOENT:
        return f"{path}: is not there"
    return f"{path}: {os.strerror(code)}" if code else f"{path}: cannot open"


def _permission_denied(path: str) -> str:
    user = _user_name(os.geteuid())
    try:
        info = os.stat(path)
    except OSError:
        return f"{path}: permission denied for user {user}"
    group = _group_name(info.st_gid)
    if not info.st_mode & (stat.S_IRGRP | stat.S_IWGRP) or info.st_gid == 0:
        return (
            f"{path}: permission denied for user {user}: only {_user_name(info.st_uid)} may open it "
            f"(mode {stat.filemode(info.st_mode)}, group {group}): a udev rule must give it a group"
        )
    if info.st_gid in os.getgroups() or info.st_gid == os.getegid():
        return f"{path}: permission denied for user {user}, although it is in group {group} (an ACL?)"
    service = (
        "the edge-agent service has that group already"
        if group in SERVICE_GROUPS
        else f"for the edge-agent service add {group} to SupplementaryGroups= in its unit"
    )
    if user in _members(info.st_gid):  # added to the group after this login
        return (
            f"{path}: permission denied: user {user} is in group {group}, but this process started before "
            f"that: log in again (or run newgrp {group}); {service}"
        )
    return (
        f"{path}: permission denied: it belongs to group {group} and user {user} is not in it: "
        f"sudo usermod -aG {group} {user}, then log in again; {service}"
    )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a DynamicUser= or a container's uid without a passwd line
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _members(gid: int) -> list[str]:
    try:
        return list(grp.getgrgid(gid).gr_mem)
    except KeyError:
        return []
