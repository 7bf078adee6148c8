"""Publish policies (pure logic: which results are published) and the evidence store's bounds."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import EvidenceConfig, PublishConfig
from edge_agent.pipeline import PublishPolicy


def run(policy: PublishPolicy, stream: list[tuple[float, str | None, float | None]]) -> list[float]:
    """Times of the published results of a (time, label, score) stream."""
    return [t for t, label, score in stream if policy.decide(label, score, t)]


def test_every_publishes_everything() -> None:
    stream = [(i * 0.1, "a", 0.9) for i in range(10)]
    assert len(run(PublishPolicy(PublishConfig()), stream)) == 10


def test_min_score_drops_weak_results_and_keeps_scoreless_ones() -> None:
    policy = PublishPolicy(PublishConfig(min_score=0.5))
    stream = [(0.0, "a", 0.49), (0.1, "a", 0.5), (0.2, "a", 0.1), (0.3, None, None)]
    assert run(policy, stream) == [0.1, 0.3]


def test_on_change_label_or_score_delta() -> None:
    policy = PublishPolicy(PublishConfig(policy="on_change", change_delta=0.1))
    stream = [
        (0.0, "cat", 0.80),  # first: published
        (0.1, "cat", 0.85),  # +0.05: no
        (0.2, "cat", 0.88),  # +0.08 from the last published: no
        (0.3, "cat", 0.95),  # +0.15 from the last published (drift adds up): yes
        (0.4, "dog", 0.95),  # label changed: yes
        (0.5, "dog", 0.90),  # -0.05: no
    ]
    assert run(policy, stream) == [0.0, 0.3, 0.4]


def test_interval_publishes_at_most_once_per_interval() -> None:
    policy = PublishPolicy(PublishConfig(policy="interval", interval_s=1.0))
    stream = [(i * 0.25, "a", 0.9) for i in range(13)]  # 0 .. 3 s
    assert run(policy, stream) == [0.0, 1.0, 2.0, 3.0]


def test_max_rate_caps_every_and_on_change() -> None:
    every = PublishPolicy(PublishConfig(max_rate_hz=2.0))
    assert run(every, [(i * 0.1, "a", 0.9) for i in range(20)]) == pytest.approx([0.0, 0.5, 1.0, 1.5])
    changing = PublishPolicy(PublishConfig(policy="on_change", max_rate_hz=1.0))
    labels = [(i * 0.2, "ab"[i % 2], 0.9) for i in range(10)]  # changes every result
    assert run(changing, labels) == pytest.approx([0.0, 1.0])  # 0.0 'a'; then 1.0 is 'b' (changed): yes


def test_evidence_store_limits(tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    from edge_agent.evidence import EvidenceStore

    frame = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    store = EvidenceStore(tmp_path / "ev", EvidenceConfig(enabled=True, max_files=3, min_score=0.5))
    assert store.wants("cat", 0.6) and not store.wants("cat", 0.4) and not store.wants("cat", None)
    paths = [store.save(frame, seq, "cat") for seq in range(1, 6)]
    kept = sorted(p.name for p in (tmp_path / "ev").glob("*.jpg"))
    assert kept == [p.name for p in paths[-3:]]  # the oldest went first
    assert all(p.read_bytes()[:2] == b"\xff\xd8" for p in paths[-3:])  # JPEG

    # bytes bound and age bound, also for files left by an earlier run
    one = paths[-1].stat().st_size
    store = EvidenceStore(tmp_path / "ev", EvidenceConfig(enabled=True, max_bytes=max(1024, 2 * one + 10)))
    assert store.count <= 2 and store.total_bytes <= 2 * one + 10
    old = next((tmp_path / "ev").glob("*.jpg"))
    week_ago = time.time() - 8 * 24 * 3600
    os.utime(old, (week_ago, week_ago))
    store = EvidenceStore(tmp_path / "ev", EvidenceConfig(enabled=True))
    assert not old.exists()


def test_evidence_labels_filter(tmp_path: Path) -> None:
    from edge_agent.evidence import EvidenceStore

    store = EvidenceStore(tmp_path / "ev", EvidenceConfig(enabled=True, labels=["person"]))
    assert store.wants("person", None) and not store.wants("car", 0.99)
    assert not EvidenceStore(tmp_path / "x", EvidenceConfig(enabled=False)).wants("person", 1.0)


def test_evidence_names_folder_quality_and_exact_bounds(tmp_path: Path) -> None:
    """File names made only of safe characters (a label cannot leave the folder), a folder other users cannot
    read, the configured JPEG quality, the counters, and the bounds at their exact values."""
    pytest.importorskip("cv2")
    from edge_agent.evidence import EvidenceStore

    frame = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    folder = tmp_path / "evidence" / "cam"  # made with its parents
    store = EvidenceStore(folder, EvidenceConfig(enabled=True, jpeg_quality=95))
    assert stat.S_IMODE(folder.stat().st_mode) & 0o007 == 0
    escape = store.save(frame, 7, "../../etc/passwd x")
    assert escape == folder / "000000000007-.._.._etc_passwd_x.jpg"
    assert store.save(frame, 8, None) == folder / "000000000008-result.jpg"
    assert store.save(frame, 9, "a" * 100) == folder / f"000000000009-{'a' * 40}.jpg"
    sizes = [p.stat().st_size for p in sorted(folder.iterdir())]
    assert store.saved == store.count == 3 and store.total_bytes == sum(sizes) and store.last_error is None
    low = EvidenceStore(tmp_path / "low", EvidenceConfig(enabled=True, jpeg_quality=20)).save(frame, 1, "x")
    assert low is not None and low.stat().st_size < escape.stat().st_size * 0.7

    scratch = EvidenceStore(tmp_path / "scratch", EvidenceConfig(enabled=True)).save(frame, 1, "x")
    assert scratch is not None
    one = scratch.stat().st_size  # the same frame encodes to the same bytes: every file has this size
    exact = EvidenceStore(tmp_path / "exact", EvidenceConfig(enabled=True, max_files=2, max_bytes=2 * one))
    for seq in range(1, 4):
        exact.save(frame, seq, "x")
    assert exact.count == 2 and exact.total_bytes == 2 * one  # at the bounds: kept; one more: the oldest goes
    assert sorted(p.name[:12] for p in (tmp_path / "exact").iterdir()) == ["000000000002", "000000000003"]
    assert EvidenceStore(tmp_path / "s", EvidenceConfig(enabled=True, min_score=0.5)).wants("x", 0.5)

    (tmp_path / "exact" / "000000000004-x.jpg").mkdir()  # a file that cannot be written: said, not raised
    assert exact.save(frame, 4, "x") is None and exact.count == 2
    assert exact.last_error is not None and "could not write" in exact.last_error
