"""Whether the state directory's file system has room for what the config lets the daemon keep there.

The outbox and each pipeline's evidence folder are bounded (``outbox.max_bytes``, ``evidence.max_bytes``),
and so are the models the fleet deploys (``fleet.max_model_bytes``; each pipeline keeps its current model,
the previous one and one arriving), but a bound is a promise only if the card can hold it: on a full card
new results are dropped (counted), evidence frames are not kept and a deployment is refused. A small card,
or a ``state_dir`` on a RAM disk, is worth a word from ``edge-agent check`` and at the start, before it
fills. So are evidence frames no bound covers any more: a pipeline removed from the config (or renamed, or
with evidence turned off) leaves its folder, which nothing prunes by age or size; the daemon does not
delete what no config speaks for, it says where it is.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

from edge_agent.config import AgentConfig
from edge_agent.fleet.store import MODELS_KEPT, has_deployments

SQLITE_SUFFIXES = ("", "-wal", "-shm")  # the outbox database and its write-ahead log and shared memory


def room_shortfall(cfg: AgentConfig) -> str | None:
    """A one-line note when the bounds of the outbox, the evidence folders and the fleet's models add up to
    more than the state directory's file system can hold (its free space plus what they hold already), else
    None."""
    state_dir = cfg.state_dir
    bounds = [("the outbox", "outbox.max_bytes", cfg.outbox.max_bytes)]
    try:
        held = _allocated(Path(f"{cfg.outbox_path}{suffix}") for suffix in SQLITE_SUFFIXES)
        for i, p in enumerate(cfg.pipelines):
            if p.evidence.enabled:
                key = f"pipelines[{i}].evidence.max_bytes"
                bounds.append((f"{p.name}'s evidence", key, p.evidence.max_bytes))
                folder = cfg.evidence_dir(p)
                held += _allocated(folder.glob("*.jpg")) if folder.is_dir() else 0
        if _fleet_may_deploy(cfg):
            key = f"{MODELS_KEPT} per pipeline x fleet.max_model_bytes"
            bounds.append(
                ("the fleet's models", key, MODELS_KEPT * len(cfg.pipelines) * cfg.fleet.max_model_bytes)
            )
            deployed = state_dir / "deployed"
            held += _allocated(deployed.iterdir()) if deployed.is_dir() else 0
        existing = next((d for d in (state_dir, *state_dir.parents) if d.is_dir()), None)
        fs = os.statvfs(existing) if existing is not None else None
    except OSError:  # a state_dir this user may not look into (the service's, checked by hand): no word
        return None
    if fs is None:
        return None
    room = fs.f_bavail * fs.f_frsize + held
    wanted = sum(b for *_, b in bounds)
    if room >= wanted:
        return None
    parts = ", ".join(f"{what} up to {_mb(b)} ({key})" for what, key, b in bounds)
    return (
        f"state_dir {state_dir}: its file system has room for {_mb(room)} of what the config may keep there, "
        f"{_mb(wanted)}: {parts}. When it is full, new results are dropped (counted in outbox.dropped) and "
        "evidence frames are not kept: lower those bounds or give state_dir more room"
    )


def _fleet_may_deploy(cfg: AgentConfig) -> bool:
    """Models may arrive: remote deployment is on with a key to trust (a ``*.pub`` file, not read here: the
    start reads and checks them), or models were deployed before (the daemon keeps serving them)."""
    keys = cfg.fleet.trusted_keys_dir
    return (cfg.fleet.enabled and keys.is_dir() and any(keys.glob("*.pub"))) or has_deployments(cfg.state_dir)


def storage_notes(cfg: AgentConfig) -> list[str]:
    """What ``check`` and the start say about the state directory: too little room for the bounds, and
    evidence frames no bound covers."""
    room = room_shortfall(cfg)
    return ([room] if room else []) + unkept_evidence(cfg)


def unkept_evidence(cfg: AgentConfig) -> list[str]:
    """A note for each evidence folder under state_dir that holds frames and that no pipeline keeping
    evidence owns: they outlive every bound the config sets (``max_age_s`` included) until deleted."""
    owners = {p.name for p in cfg.pipelines if p.evidence.enabled}
    root = cfg.state_dir / "evidence"
    notes = []
    try:
        folders = sorted(d for d in root.iterdir() if d.is_dir() and d.name not in owners)
    except OSError:  # none yet, or a state_dir this user may not look into
        return []
    for folder in folders:
        try:
            stats = [p.stat() for p in folder.glob("*.jpg")]
        except OSError:
            continue
        if not stats:
            continue
        newest = time.strftime("%Y-%m-%d %H:%M", time.localtime(max(st.st_mtime for st in stats)))
        notes.append(
            f"evidence folder {folder}: {len(stats)} frame(s), {_mb(sum(st.st_size for st in stats))}, the "
            f"newest from {newest}, of a pipeline that keeps no evidence now (not in the config, renamed, or "
            f"evidence off): nothing deletes them at their age; remove the folder when they are no longer "
            f"needed (rm -r {folder})"
        )
    return notes


def _allocated(paths: Iterable[Path]) -> int:
    """Bytes the files take on disk (their blocks: what deleting them would give back)."""
    total = 0
    for path in paths:
        try:
            total += path.stat().st_blocks * 512
        except OSError:
            continue
    return total


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 10e6 else f"{n / 1e6:.1f} MB"
