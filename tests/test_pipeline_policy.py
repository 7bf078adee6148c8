"""Publish policies (pure logic: which results are published) and the evidence store's bounds."""

from __future__ import annotations

import os
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
