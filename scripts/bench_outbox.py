#!/usr/bin/env python3
"""Benchmark the durable publish path: outbox writes/acks, payload building, and end to end through mosquitto.

    /work/venv/bin/python scripts/bench_outbox.py                # table on stdout
    /work/venv/bin/python scripts/bench_outbox.py --json out.json --repeats 5 --n 10000

End to end = result_payload() + publish_result(qos=1) for N results, until every one is PUBACKed and deleted
from the outbox (flush), against a real mosquitto on loopback. Target: >= 2,000 results/s. The backlog run
replays 100k pending rows (a long outage) and reports the drain rate and the process's RSS growth.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_broker import Broker  # noqa: E402  (the tests' mosquitto wrapper, with benchmark settings)

from edge_agent.publish.mqtt import MqttPublisher  # noqa: E402
from edge_agent.publish.outbox import Outbox, SeqCounter  # noqa: E402
from edge_agent.publish.payloads import result_payload  # noqa: E402

TOPIC = "edge/bench/door/result"
LAT = {"capture_age": 1.2, "preprocess": 0.4, "invoke": 3.9, "postprocess": 0.1, "total": 5.6}
FIELDS = {
    "label": "open",
    "class_id": 1,
    "score": 0.93,
    "top_k": [{"label": "open", "class_id": 1, "score": 0.93}],
}


def make_payload(seq: int) -> bytes:
    return result_payload(device="bench", pipeline="door", seq=seq, model_name="door", model_sha256="ab" * 32,
                          fields=FIELDS, latency_ms=LAT, frame_index=seq)  # fmt: skip


def rate(n: int, fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def bench_append(workdir: Path, n: int, batch: int) -> float:
    payload = make_payload(1)
    with Outbox(workdir / f"append-{batch}-{time.monotonic_ns()}.db") as ob:
        if batch == 1:
            return rate(n, lambda: [ob.append(TOPIC, payload, 1) for _ in range(n)])
        items = [(TOPIC, payload, 1)] * batch
        return rate(n, lambda: [ob.append_many(items) for _ in range(n // batch)])


def bench_ack(workdir: Path, n: int, batch: int) -> float:
    with Outbox(workdir / f"ack-{batch}-{time.monotonic_ns()}.db") as ob:
        ids = ob.append_many([(TOPIC, make_payload(1), 1)] * n)
        if batch == 1:
            return rate(n, lambda: [ob.ack(i) for i in ids])
        return rate(n, lambda: [ob.ack_many(ids[i : i + batch]) for i in range(0, n, batch)])


def bench_payload(n: int) -> float:
    return rate(n, lambda: [make_payload(i) for i in range(n)])


def bench_end_to_end(workdir: Path, broker: Broker, n: int) -> float:
    with Outbox(workdir / f"e2e-{time.monotonic_ns()}.db") as ob:
        pub = MqttPublisher(broker.mqtt_config(), "bench", ob)
        pub.start()
        deadline = time.monotonic() + 10
        while not pub.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        seq = SeqCounter(ob, "door")
        t0 = time.perf_counter()
        for _ in range(n):
            pub.publish_result(TOPIC, make_payload(seq.next()), 1)
        if not pub.flush(timeout=120):
            raise RuntimeError(f"not drained: {pub.stats()}")
        elapsed = time.perf_counter() - t0
        pub.stop(drain_timeout=5)
        seq.close()
        return n / elapsed


def bench_backlog(workdir: Path, broker: Broker, n: int) -> dict[str, float]:
    import psutil

    proc = psutil.Process()
    with Outbox(workdir / f"backlog-{time.monotonic_ns()}.db") as ob:
        for start in range(0, n, 1000):
            ob.append_many([(TOPIC, make_payload(s), 1) for s in range(start + 1, start + 1001)])
        rss0 = proc.memory_info().rss
        peak = rss0
        pub = MqttPublisher(broker.mqtt_config(), "bench", ob)
        t0 = time.perf_counter()
        pub.start()
        while ob.depth() > 0:
            peak = max(peak, proc.memory_info().rss)
            if time.perf_counter() - t0 > 300:
                raise RuntimeError(f"backlog not drained: {pub.stats()}")
            time.sleep(0.05)
        pub.flush(timeout=30)
        elapsed = time.perf_counter() - t0
        pub.stop(drain_timeout=5)
    return {"rows": n, "drain_per_s": n / elapsed, "seconds": elapsed, "rss_growth_mb": (peak - rss0) / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="results per run")
    ap.add_argument("--repeats", type=int, default=3, help="runs per case; the median is reported")
    ap.add_argument("--backlog", type=int, default=100_000, help="rows for the backlog replay (0: skip)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as tmp:
        work = Path(tmp)
        broker = Broker(work).start()
        try:
            cases: list[tuple[str, Callable[[], float]]] = [
                ("payload build (result_payload)", lambda: bench_payload(args.n)),
                ("outbox append, 1 per transaction", lambda: bench_append(work, args.n, 1)),
                ("outbox append_many, 100 per transaction", lambda: bench_append(work, args.n, 100)),
                ("outbox ack, 1 per transaction", lambda: bench_ack(work, args.n, 1)),
                ("outbox ack_many, 100 per transaction", lambda: bench_ack(work, args.n, 100)),
                ("end to end QoS 1 via mosquitto (payload+append+PUBACK+delete)",
                 lambda: bench_end_to_end(work, broker, args.n)),
            ]  # fmt: skip
            for name, fn in cases:
                runs = [fn() for _ in range(args.repeats)]
                rows.append((name, statistics.median(runs)))
            backlog = bench_backlog(work, broker, args.backlog) if args.backlog else None
        finally:
            broker.stop()

    width = max(len(name) for name, _ in rows)
    print(f"{'case':<{width}}  {'per second (median of ' + str(args.repeats) + ')':>28}")
    for name, value in rows:
        print(f"{name:<{width}}  {value:>28,.0f}")
    e2e = rows[-1][1]
    print(
        f"\nend to end vs 2,000 results/s target: {e2e / 2000:.1f}x (load average {os.getloadavg()[0]:.1f})"
    )
    if backlog:
        print(
            f"backlog replay: {backlog['rows']:,} rows in {backlog['seconds']:.1f} s "
            f"({backlog['drain_per_s']:,.0f}/s), RSS growth {backlog['rss_growth_mb']:.1f} MB"
        )
    result = {
        "n": args.n,
        "repeats": args.repeats,
        "per_second_median": dict(rows),
        "target_ratio": e2e / 2000,
        "backlog": backlog,
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
        "loadavg_1m_at_end": os.getloadavg()[0],  # other work on the machine lowers every number
    }
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
