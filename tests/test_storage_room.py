"""Room on the state directory's file system for the outbox and evidence bounds, measured on this machine's
real file system: ``edge-agent check`` notes bounds it cannot hold (and stays at exit 0), says nothing for
the defaults here, and counts what the outbox and evidence hold already as room."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import parse_config
from edge_agent.storage_room import room_shortfall, unkept_evidence
from tests.test_config_check import cameras_config, edge_agent, write

PETABYTE = 10**15


def free_bytes(path: Path) -> int:
    fs = os.statvfs(path)
    return fs.f_bavail * fs.f_frsize


def test_check_notes_bounds_the_card_cannot_hold_and_nothing_for_the_defaults(tmp_path: Path) -> None:
    (tmp_path / "m.tflite").write_bytes(b"not loaded with --no-models")
    cfg = cameras_config(["/dev/video77", "/dev/video78"])
    proc = edge_agent("check", "--no-models", str(write(tmp_path, cfg)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "state_dir" not in proc.stdout + proc.stderr  # 256 MB of outbox fits this machine's disk

    cfg["outbox"] = {"max_bytes": PETABYTE}
    cfg["pipelines"][1]["evidence"] = {"enabled": True, "max_bytes": 50_000_000}
    proc = edge_agent("check", "--no-models", str(write(tmp_path, cfg)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (note,) = [line.strip() for line in proc.stderr.splitlines() if "state_dir" in line]  # notes: stderr
    assert note.startswith(f"state_dir {tmp_path / 'state'}: its file system has room for ")
    assert " of what the config may keep there, 1,000,000,050 MB: the outbox up to 1,000,000,000 MB " in note
    assert "(outbox.max_bytes), c1's evidence up to 50 MB (pipelines[1].evidence.max_bytes). " in note
    assert note.endswith(
        "When it is full, new results are dropped (counted in outbox.dropped) and evidence frames are not "
        "kept: lower those bounds or give state_dir more room"
    )


def test_what_the_outbox_and_evidence_hold_already_counts_as_room(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "evidence" / "c0").mkdir(parents=True)
    (state / "outbox.sqlite3").write_bytes(os.urandom(48 << 20))  # written, not sparse: its blocks are taken
    (state / "evidence" / "c0" / "000000000001-x.jpg").write_bytes(os.urandom(16 << 20))
    (state / "evidence" / "c0" / "notes.txt").write_bytes(os.urandom(64 << 20))  # not evidence: not counted
    raw = cameras_config(["/dev/video77"])
    raw["state_dir"] = str(state)
    raw["pipelines"][0]["evidence"] = {"enabled": True, "max_bytes": 1 << 20}

    def shortfall(outbox_bytes: int) -> str | None:
        return room_shortfall(parse_config({**raw, "outbox": {"max_bytes": outbox_bytes}}))

    # held: 64 MB (notes.txt's 64 more are not the daemon's): a bound 32 MB past the free space fits in what
    # the two hold, one 32 MB past that does not
    assert shortfall(free_bytes(state) + (32 << 20)) is None
    assert shortfall(free_bytes(state) + (96 << 20)) is not None


def test_the_fleets_models_count_while_models_may_arrive(tmp_path: Path) -> None:
    """With remote deployment on (a key to trust) or something deployed before, each pipeline may keep three
    models of up to fleet.max_model_bytes (current, previous, arriving): they count against the room, and
    what deployed/ holds already counts as room; with deployment off and nothing deployed they do not."""
    state, keys = tmp_path / "state", tmp_path / "keys"
    state.mkdir()
    keys.mkdir()
    raw = cameras_config(["/dev/video77", "/dev/video78"])
    raw["state_dir"] = str(state)
    fleet_bound = 3 * 2 * (1 << 30)  # two pipelines, 1 GiB models

    def shortfall(margin: int, **fleet: object) -> str | None:
        outbox = free_bytes(state) - fleet_bound + margin
        cfg = {**raw, "outbox": {"max_bytes": outbox}, "fleet": {"trusted_keys_dir": str(keys), **fleet}}
        return room_shortfall(parse_config(cfg, base_dir=tmp_path))

    big = {"max_model_bytes": 1 << 30}
    assert shortfall(48 << 20, **big) is None  # no key to trust, nothing deployed: no model can arrive
    (keys / "op.pub").write_text("not read here")
    note = shortfall(48 << 20, **big)
    assert (
        note is not None
        and "the fleet's models up to 6,442 MB (3 per pipeline x fleet.max_model_bytes)" in note
    )
    assert shortfall(48 << 20, enabled=False, **big) is None  # remote deployment off
    (state / "deployed").mkdir()
    (state / "deployed" / f"{'a' * 64}.tflite").write_bytes(os.urandom(64 << 20))
    assert shortfall(80 << 20, enabled=False, **big) is not None  # a model deployed before is kept and served
    assert shortfall(48 << 20, enabled=False, **big) is None  # ... and the 64 MB it takes count as room


def test_evidence_no_pipeline_keeps_is_named_not_deleted(tmp_path: Path) -> None:
    """A pipeline removed from the config (or with evidence turned off) leaves frames nothing prunes: check
    names each such folder with what it holds and how to remove it; the daemon deletes nothing of it."""
    evidence = tmp_path / "state" / "evidence"
    frames = {"c0": 1, "c1": 2, "gone": 3, "empty": 0}  # c0 keeps evidence, c1 no longer, gone is no pipeline
    for name, n in frames.items():
        (evidence / name).mkdir(parents=True)
        for seq in range(n):
            (evidence / name / f"00000000000{seq}-x.jpg").write_bytes(b"\xff\xd8" + bytes(1000))
    (evidence / "empty" / "notes.txt").write_text("not a frame")
    (tmp_path / "m.tflite").write_bytes(b"not loaded with --no-models")
    cfg = cameras_config(["/dev/video77", "/dev/video78"])
    cfg["pipelines"][0]["evidence"] = {"enabled": True}
    proc = edge_agent("check", "--no-models", str(write(tmp_path, cfg)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    notes = [line.strip() for line in proc.stderr.splitlines() if line.strip().startswith("evidence folder")]
    assert [n.split(":")[0] for n in notes] == [
        f"evidence folder {evidence / 'c1'}",
        f"evidence folder {evidence / 'gone'}",
    ]
    assert notes[1].startswith(f"evidence folder {evidence / 'gone'}: 3 frame(s), 0.0 MB, the newest from ")
    assert notes[1].endswith(f"remove the folder when they are no longer needed (rm -r {evidence / 'gone'})")
    assert "nothing deletes them at their age" in notes[0]
    assert sum(1 for _ in evidence.rglob("*.jpg")) == 6  # named, never deleted
    cfg["pipelines"][1]["evidence"] = {"enabled": True}  # c1 keeps evidence again: only gone is left
    assert [n.split(":")[0] for n in unkept_evidence(parse_config(cfg, base_dir=tmp_path))] == [
        f"evidence folder {evidence / 'gone'}"
    ]


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root, to drop its override powers"
)
def test_a_state_dir_this_user_may_not_look_into_is_no_traceback(tmp_path: Path) -> None:
    """`edge-agent check` by hand on the service's config: its state directory (under /var/lib/private with
    DynamicUser=) is not this user's to look into: no word on room, and no traceback (the first version of
    the room check raised there). Run as root without CAP_DAC_OVERRIDE, on a folder another user owns."""
    private = tmp_path / "private"
    (private / "state").mkdir(parents=True)
    os.chown(private, 4242, 4242)
    private.chmod(0o700)
    (tmp_path / "m.tflite").write_bytes(b"not loaded with --no-models")
    cfg = cameras_config(["/dev/video77"])
    cfg["state_dir"] = str(private / "state")
    cfg["outbox"] = {"max_bytes": PETABYTE}  # a note if it could look
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--clear-groups"]
    proc = subprocess.run(
        [*drop, sys.executable, "-m", "edge_agent.cli", "check", "--no-models", str(write(tmp_path, cfg))],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "its file system has room" not in proc.stderr
    assert "camera device /dev/video77 is not there now" in proc.stderr  # the other notes still come
