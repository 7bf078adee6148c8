"""The evidence store when the card lets it down: a full card (a real short write: the file size limit of a
child process) is said once, counted, leaves no partial file and recovers by itself; files a kill left
half-written go at the next start; files from an earlier run are counted past an entry that cannot be read;
and what it counts reaches the stats payload and Prometheus. (Its bounds and names:
test_pipeline_policy.py; masking: test_motion_masks_zones.py.)"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.config import EvidenceConfig
from edge_agent.evidence import QUEUE_FRAMES, EvidenceStore
from edge_agent.metrics import _pipeline_metrics
from edge_agent.publish.payloads import stats_payload
from edge_agent.stats import PipelineStats
from tests.fixtures.broker import validate_payload
from tests.fixtures.cards import immutable

cv2 = pytest.importorskip("cv2")

FULL_CARD = textwrap.dedent(
    """
    import json, logging, resource, signal, sys
    from pathlib import Path
    import numpy as np
    from edge_agent.config import EvidenceConfig
    from edge_agent.evidence import EvidenceStore

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as ENOSPC would
    folder = Path(sys.argv[1])
    store = EvidenceStore(folder, EvidenceConfig(enabled=True))
    frame = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)  # ~40 KB as JPEG
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # the card fills after 4 KB of a file
    full = [store.save(frame, seq, "cat") for seq in (1, 2, 3)]
    left = sorted(p.name for p in folder.iterdir())
    during = {**store.stats(), "left": left, "returned": [str(p) for p in full]}
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again
    saved = store.save(frame, 4, "cat")
    after = {**store.stats(), "left": sorted(p.name for p in folder.iterdir()), "returned": str(saved)}
    print(json.dumps({"during": during, "after": after}))
    """
)


def test_a_full_card_is_said_once_counted_and_leaves_no_partial_file(tmp_path: Path) -> None:
    folder = tmp_path / "ev"
    run = subprocess.run(
        [sys.executable, "-c", FULL_CARD, str(folder)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    during, after = got["during"], got["after"]
    assert during["returned"] == ["None", "None", "None"]
    assert during["left"] == []  # the partial .tmp of each frame is gone, and nothing was renamed into place
    assert (during["files"], during["bytes"], during["saved"], during["failed"]) == (0, 0, 0, 3)
    assert during["last_error"].startswith(f"could not write {folder}/000000000003-cat.jpg: ")
    warnings = [line for line in run.stderr.splitlines() if line.startswith("WARNING evidence:")]
    assert warnings == [f"WARNING evidence: could not write {folder}/000000000001-cat.jpg: File too large"]
    assert after["left"] == ["000000000004-cat.jpg"] and after["returned"].endswith("000000000004-cat.jpg")
    assert (after["files"], after["saved"], after["failed"], after["last_error"]) == (1, 1, 3, None)
    assert after["bytes"] == (folder / "000000000004-cat.jpg").stat().st_size
    assert f"INFO evidence: saving {folder} again after 3 frame(s) not stored" in run.stderr.splitlines()


def test_each_new_kind_of_failure_is_said_and_a_recovery_ends_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One line per run of the same failure; a different one (a mask that fails, then a write) is said too;
    a frame JPEG cannot hold is a failure like the others, not an exception in the pipeline."""
    from edge_agent.processing.masks import FrameMask

    store = EvidenceStore(tmp_path / "ev", EvidenceConfig(enabled=True))
    frame = np.full((32, 32, 3), 100, np.uint8)
    (tmp_path / "ev" / "000000000003-x.tmp").mkdir()  # frame 3's write fails: its temporary name is a folder
    (tmp_path / "ev" / "000000000004-x.tmp").mkdir()
    square = FrameMask([[[0.1, 0.1], [0.9, 0.1], [0.9, 0.9]]])
    with caplog.at_level("INFO", logger="edge_agent.evidence"):
        assert store.save(np.zeros(5, np.uint8), 1, "x", mask=square) is None  # not an image: not masked
        assert store.save(np.zeros(7, np.uint8), 2, "x", mask=square) is None
        assert store.save(frame, 3, "x") is None and store.save(frame, 4, "x") is None
        assert store.save(frame, 5, "x") is not None
        assert store.save(frame, 6, "x") is not None
        assert store.save(np.zeros((4, 4, 5), np.uint8), 7, "x") is None  # five channels: no JPEG holds them
        assert store.save(frame, 8, "x") is not None
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "evidence: could not mask frame 1, not stored: cannot mask data of shape (5,): not an image",
        f"evidence: could not write {tmp_path}/ev/000000000003-x.jpg: Is a directory",
        f"evidence: saving {tmp_path}/ev again after 4 frame(s) not stored",
        "evidence: could not encode frame 7 as JPEG: channels == 1 || channels == 3 || channels == 4",
        f"evidence: saving {tmp_path}/ev again after 1 frame(s) not stored",
    ]
    assert store.stats() == {
        "files": 3, "bytes": store.total_bytes, "saved": 3, "failed": 5, "last_error": None
    }  # fmt: skip


def test_half_written_files_go_at_start_and_earlier_files_count_past_a_broken_entry(tmp_path: Path) -> None:
    folder = tmp_path / "ev"
    first = EvidenceStore(folder, EvidenceConfig(enabled=True))
    frame = np.random.default_rng(2).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    kept = [first.save(frame, seq, "x") for seq in range(1, 6)]
    (folder / "000000000006-x.tmp").write_bytes(b"\xff\xd8 cut short by a kill")
    for name in ("000000000000-a.jpg", "000000000003-b.jpg", "000000000009-z.jpg"):
        (folder / name).symlink_to(tmp_path / "gone")  # entries that cannot be read, wherever they sort
    again = EvidenceStore(folder, EvidenceConfig(enabled=True, max_files=3))
    assert not (folder / "000000000006-x.tmp").exists()
    assert again.count == 3 and again.total_bytes == sum(p.stat().st_size for p in kept[-3:])
    assert [p.exists() for p in kept] == [False, False, True, True, True]  # the oldest went, past the links


def test_files_go_at_their_age_at_start_on_save_and_while_nothing_is_saved(tmp_path: Path) -> None:
    """The age bound is a retention promise: a quiet camera's last frames go at ``max_age_s`` though no
    frame comes after them, not at the next event or restart."""
    folder = tmp_path / "ev"
    cfg = EvidenceConfig(enabled=True, max_age_s=3600)
    frame = np.random.default_rng(4).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    first = EvidenceStore(folder, cfg)
    old, recent = first.save(frame, 1, "x"), first.save(frame, 2, "x")
    hour_ago = time.time() - 3700
    os.utime(old, (hour_ago, hour_ago))  # left by a run an hour ago
    store = EvidenceStore(folder, cfg)  # a start: the file past its age goes, the other stays
    assert (old.exists(), recent.exists(), store.count) == (False, True, 1)
    store.expire(time.time() + 3500)  # not due yet
    assert recent.exists() and store.count == 1
    store.expire(time.time() + 3700)  # due, with no frame saved since
    assert not recent.exists() and store.stats() == {
        "files": 0, "bytes": 0, "saved": 0, "failed": 0, "last_error": None
    }  # fmt: skip
    store.expire(time.time() + 10**6)  # an empty folder: nothing to do
    newer = store.save(frame, 3, "x")
    assert newer is not None and newer.exists() and store.count == 1


def test_files_that_cannot_be_deleted_are_said_once_and_the_bounds_hold_for_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A card that refuses deletes (gone read-only, immutable files) must not log a line per file, each
    second: the first is said, the rest counted, and a delete that works again says how many were left."""
    folder = tmp_path / "ev"
    store = EvidenceStore(folder, EvidenceConfig(enabled=True, max_files=2))
    frame = np.random.default_rng(5).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    saved = [store.save(frame, seq, "x") for seq in (1, 2, 3, 4)]
    assert [p.exists() for p in saved] == [False, False, True, True]  # two files at most: 3 and 4 are kept
    stuck = saved[2:]
    with immutable(*stuck), caplog.at_level(logging.INFO, logger="edge_agent.evidence"):
        for seq in (5, 6):  # each prunes one immutable file
            store.save(frame, seq, "x")
        store.save(frame, 7, "x")  # prunes 5: deleted
    lines = [r.getMessage() for r in caplog.records if "delet" in r.getMessage()]
    assert lines == [
        f"evidence: could not delete {stuck[0]}: Operation not permitted; the next start tries again",
        f"evidence: deleting in {folder} again; 2 file(s) could not be",
    ]
    assert all(p.exists() for p in stuck) and store.count == 2  # left, and the bounds hold for the rest
    assert sorted(p.name for p in folder.glob("*.jpg")) == [
        "000000000003-x.jpg", "000000000004-x.jpg", "000000000006-x.jpg", "000000000007-x.jpg"
    ]  # fmt: skip


def test_the_counts_reach_the_stats_payload_and_prometheus(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path / "ev", EvidenceConfig(enabled=True))
    frame = np.random.default_rng(3).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    store.save(frame, 1, "x")
    (tmp_path / "ev" / "000000000002-x.tmp").mkdir()
    store.save(frame, 2, "x")
    source = {"connected": True, "reconnects": 0, "last_error": None}
    model = {"name": "m", "sha256": "0" * 12, "backend": "litert", "delegate": None, "delegate_error": None}
    snap = PipelineStats().snapshot(source=source, model=model, evidence=store.stats())
    raw = stats_payload(
        device="dev",
        uptime_s=1.0,
        pipelines={"cam": snap},
        mqtt={"connected": True, "reconnects": 0, "last_error": None},
        outbox={"depth": 0, "bytes": 0, "dropped": 0},
    )
    sent = validate_payload(raw, "stats")["pipelines"]["cam"]["evidence"]
    one = (tmp_path / "ev" / "000000000001-x.jpg").stat().st_size
    assert sent == {"files": 1, "bytes": one, "saved": 1, "failed": 1, "last_error": sent["last_error"]}
    assert "could not write" in sent["last_error"]

    class Pipelines:
        def collect(self):
            yield from _pipeline_metrics({"cam": (snap, {})})

    registry = CollectorRegistry()
    registry.register(Pipelines())
    scraped = {
        (s.name, s.labels.get("pipeline")): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    assert scraped[("edge_agent_evidence_saved_total", "cam")] == 1
    assert scraped[("edge_agent_evidence_failed_total", "cam")] == 1
    assert scraped[("edge_agent_evidence_files", "cam")] == 1
    assert scraped[("edge_agent_evidence_bytes", "cam")] == one
    no_evidence = PipelineStats().snapshot(source=source, model=model)
    assert "evidence" not in no_evidence


def test_a_folder_that_cannot_be_made_stops_no_result_and_is_tried_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file where the folder goes (or a parent the service's user cannot write: a run by hand as root) was
    a traceback at the start that stopped every pipeline; now the store says so once, counts each frame it
    could not keep, and makes the folder as soon as it can."""
    folder = tmp_path / "evidence" / "cam"
    folder.parent.mkdir()
    folder.write_text("in the way")
    frame = np.full((32, 32, 3), 100, np.uint8)
    with caplog.at_level("INFO", logger="edge_agent.evidence"):
        store = EvidenceStore(folder, EvidenceConfig(enabled=True))
        assert store.save(frame, 1, "x") is None and store.save(frame, 2, "x") is None
        folder.unlink()  # moved out of the way
        assert store.save(frame, 3, "x") == folder / "000000000003-x.jpg"
    problem = (
        f"cannot create the folder {folder} (File exists): frames are not kept until it can be; fix the "
        "owner of its parent (the service's user writes there) or move what is there"
    )
    assert [r.getMessage() for r in caplog.records] == [
        f"evidence: {problem}",
        f"evidence: saving {folder} again after 2 frame(s) not stored",
    ]
    assert store.stats() == {
        "files": 1, "bytes": store.total_bytes, "saved": 1, "failed": 2, "last_error": None
    }  # fmt: skip


def recorded_saves(
    store: EvidenceStore, gate: threading.Event | None = None, delay_s: float = 0.0
) -> tuple[list, threading.Event]:
    """Wrap ``store.save`` (the writer thread's call): record each call's thread, its CPUs and the seq; with
    ``gate``, each call waits for it (a stuck card); with ``delay_s``, each takes that long more (a slow
    one). The event returned is set when the first call began."""
    calls: list[tuple[str, frozenset[int], int]] = []
    began = threading.Event()
    save = store.save

    def recording(frame: np.ndarray, seq: int, label: str | None, mask=None):
        calls.append((threading.current_thread().name, frozenset(os.sched_getaffinity(0)), seq))
        began.set()
        if gate is not None:
            gate.wait(30)
        time.sleep(delay_s)
        return save(frame, seq, label, mask)

    store.save = recording  # type: ignore[method-assign]
    return calls, began


def test_kept_frames_are_written_by_the_stores_thread_from_a_masked_copy_of_their_own(tmp_path: Path) -> None:
    """The caller (the inference thread) may reuse its buffer as soon as keep returns, and it is never
    masked in place; the JPEG shows the frame as it was, masked; the stop writes what was queued."""
    from edge_agent.processing.masks import FrameMask

    store = EvidenceStore(tmp_path / "ev", EvidenceConfig(enabled=True))
    card = threading.Event()  # the writer waits for it: the buffer is reused before anything is written
    calls, _ = recorded_saves(store, card)
    square = [[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]]
    buffer = np.full((64, 64, 3), 200, np.uint8)  # a reader's frame buffer, filled again for the next frame
    assert store.keep(buffer, 1, "x", mask=FrameMask([square]))
    assert int(buffer.min()) == 200  # not masked in place
    assert store.keep(buffer, 2, "y")
    buffer[:] = 0  # the next frame, into the same buffer
    card.set()
    store.close()
    assert [(name, seq) for name, _, seq in calls] == [("evidence-ev", 1), ("evidence-ev", 2)]
    names = sorted(p.name for p in (tmp_path / "ev").iterdir())
    assert names == ["000000000001-x.jpg", "000000000002-y.jpg"]  # each with its own label
    first, second = (cv2.imread(str(p)) for p in sorted((tmp_path / "ev").glob("*.jpg")))
    inside = first[24:40, 24:40]
    outside = np.concatenate([first[:8].reshape(-1, 3), first[-8:].reshape(-1, 3)])  # JPEG rings near edges
    assert int(inside.max()) <= 24 and int(outside.min()) >= 180  # the frame as kept, masked
    assert int(second.min()) >= 190  # the frame as kept, not what the buffer held later
    assert store.stats() == {
        "files": 2,
        "bytes": store.total_bytes,
        "saved": 2,
        "failed": 0,
        "last_error": None,
    }


def test_a_slow_card_sets_the_pace_and_loses_no_frame(tmp_path: Path) -> None:
    """A card slower than the frames to keep: keep waits for room once QUEUE_FRAMES wait (the pipeline runs
    at the card's pace, as when it wrote the frames itself), and every frame is stored."""
    store = EvidenceStore(tmp_path / "ev", EvidenceConfig(enabled=True))
    recorded_saves(store, delay_s=0.05)
    frame = np.full((32, 32, 3), 90, np.uint8)
    assert all(store.keep(frame, seq, "x") for seq in range(1, 3 * QUEUE_FRAMES + 1))
    store.close()
    assert store.stats() == {
        "files": 3 * QUEUE_FRAMES, "bytes": store.total_bytes, "saved": 3 * QUEUE_FRAMES, "failed": 0,
        "last_error": None,
    }  # fmt: skip


def test_a_stuck_card_costs_frames_not_results(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A card that does not answer: keep waits at most STUCK_S once, then drops the frames to keep at once
    (counted, said once) while nothing is written; once the card answers, what was queued is written."""
    monkeypatch.setattr("edge_agent.evidence.STUCK_S", 0.5)
    store = EvidenceStore(tmp_path / "ev", EvidenceConfig(enabled=True))
    gate = threading.Event()
    calls, began = recorded_saves(store, gate)
    frame = np.full((32, 32, 3), 90, np.uint8)
    assert store.keep(frame, 1, "x") and began.wait(10)  # the writer holds frame 1, stuck on the card
    with caplog.at_level("INFO", logger="edge_agent.evidence"):
        started = time.monotonic()
        taken = [store.keep(frame, seq, "x") for seq in range(2, 2 + QUEUE_FRAMES + 3)]
        took = time.monotonic() - started
    assert taken == [True] * QUEUE_FRAMES + [False] * 3
    assert took < 1.2  # at most STUCK_S (0.5) in all, not once per frame (3 x 0.5)
    (said,) = [r.getMessage() for r in caplog.records]
    assert said == f"evidence: frame {2 + QUEUE_FRAMES} not stored: nothing written for 0.5 s (a stuck card?)"
    assert store.failed == 3 and store.last_error.endswith("(a stuck card?)")
    gate.set()
    store.close()
    assert [seq for *_, seq in calls] == list(range(1, 2 + QUEUE_FRAMES))
    assert store.stats() == {
        "files": 5,
        "bytes": store.total_bytes,
        "saved": 5,
        "failed": 3,
        "last_error": None,
    }


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_the_writer_runs_on_its_creators_cpus_not_the_inference_threads(tmp_path: Path) -> None:
    """The daemon makes the store on its main thread (the non-inference CPUs); the first frame comes from
    an inference thread pinned to a CPU of its own: the writer must not inherit that pinning."""
    mine = frozenset(os.sched_getaffinity(0))
    store = EvidenceStore(tmp_path / "ev", EvidenceConfig(enabled=True))
    calls, _ = recorded_saves(store)
    inference_cpu = frozenset({max(mine)})

    def inference() -> None:
        os.sched_setaffinity(0, inference_cpu)
        store.keep(np.zeros((16, 16, 3), np.uint8), 1, "x")

    thread = threading.Thread(target=inference)
    thread.start()
    thread.join()
    store.close()
    assert [cpus for _, cpus, _ in calls] == [mine]


def test_keep_fails_closed_and_a_broken_write_stops_neither_the_writer_nor_the_stop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A frame that cannot be masked is never queued (counted, said); a write that raises (a bug) is logged
    and counted and the writer goes on with the next frame; a writer stuck at the stop is left after the
    timeout, said, and the stop goes on."""
    from edge_agent.processing.masks import FrameMask

    store = EvidenceStore(tmp_path / "ev", EvidenceConfig(enabled=True))
    square = FrameMask([[[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]]])
    with caplog.at_level("INFO", logger="edge_agent.evidence"):
        assert store.keep(np.zeros(5, np.uint8), 3, "x", mask=square) is False
        assert store.stats()["failed"] == 1 and store.last_error.startswith(
            "could not mask frame 3, not stored"
        )
        assert store._writer is None  # nothing was queued

        save = store.save
        raised = []

        def buggy(frame: np.ndarray, seq: int, label: str | None, mask=None):
            if seq == 4:
                raised.append(seq)
                raise KeyError("a bug")
            return save(frame, seq, label, mask)

        store.save = buggy  # type: ignore[method-assign]
        frame = np.full((16, 16, 3), 50, np.uint8)
        assert store.keep(frame, 4, "x") and store.keep(frame, 5, "x")
        store.close()
    assert raised == [4] and [p.name for p in (tmp_path / "ev").iterdir()] == ["000000000005-x.jpg"]
    assert (store.failed, store.saved) == (2, 1)
    messages = [r.getMessage() for r in caplog.records]
    assert "evidence: frame 4 not stored" in messages and any("KeyError('a bug')" in m for m in messages)

    stuck = EvidenceStore(tmp_path / "stuck", EvidenceConfig(enabled=True))
    gate = threading.Event()
    _, began = recorded_saves(stuck, gate)
    assert all(stuck.keep(frame, seq, "x") for seq in range(1, 2 + QUEUE_FRAMES))  # 1 held, 4 waiting
    assert began.wait(10)
    with caplog.at_level("INFO", logger="edge_agent.evidence"):
        started = time.monotonic()
        stuck.close(timeout=0.3)
        took = time.monotonic() - started
    gate.set()
    assert took < 2.0  # the put and the join each gave up after 0.3 s
    assert (
        f"evidence: {tmp_path / 'stuck'}: frames still being written after 0.3 s; not waiting" in caplog.text
    )
