"""The terminal table of scripts/fleet-sim: one row per measurement, one column per fleet size."""

from __future__ import annotations

from typing import Any

ROWS: list[tuple[str, Any]] = [
    ("daemons (real edge-agent run)", lambda r: r["devices"]),
    ("start: all online + in group (s)", lambda r: r["startup_s"]),
    ("deploy: canary active (s)", lambda r: r["deploy"]["canary_active_s"]),
    ("deploy: canary confirmed (s)", lambda r: r["deploy"]["canary_confirmed_s"]),
    ("deploy: all active (s)", lambda r: r["deploy"]["all_active_s"]),
    (
        "deploy: group swap median / p90 (s)",
        lambda r: f"{r['deploy']['group_active_s']['median']} / {r['deploy']['group_active_s']['p90']}",
    ),
    ("deploy: all confirmed (s)", lambda r: r["deploy"]["all_confirmed_s"]),
    ("  same, seen by a subscriber (s)", lambda r: r["deploy"]["all_confirmed_seen_s"]),
    ("deploy: edge-fleet deploy exits (s)", lambda r: r["deploy"]["cli_s"]),
    ("broker CPU during deploy (s)", lambda r: r["deploy"]["broker_cpu_s"]),
    ("broker peak RSS during deploy (MiB)", lambda r: r["deploy"]["broker_peak_rss_mib"]),
    (
        "broker bytes in / out during deploy (KiB)",
        lambda r: (
            f"{r['deploy']['broker_bytes']['received'] / 1024:.0f} / "
            f"{r['deploy']['broker_bytes']['sent'] / 1024:.0f}"
        ),
    ),
    (
        "  of which over idle traffic (KiB)",
        lambda r: (
            f"{r['deploy']['broker_bytes_over_idle']['received'] / 1024:.0f} / "
            f"{r['deploy']['broker_bytes_over_idle']['sent'] / 1024:.0f}"
        ),
    ),
    ("daemons CPU during deploy (s)", lambda r: r["deploy"]["daemons_cpu_s"]),
    (
        "daemons RSS sum / USS sum (MiB)",
        lambda r: (
            f"{r['deploy']['daemons_memory']['rss_sum_mib']:.0f} / "
            f"{r['deploy']['daemons_memory']['uss_sum_mib']:.0f}"
        ),
    ),
    ("storm: broker down (s)", lambda r: r["storm"]["outage_s"]),
    ("storm: reconnected", lambda r: f"{r['storm']['reconnected']}/{r['devices']}"),
    (
        "storm: delay min / median (s)",
        lambda r: f"{r['storm']['delay_s']['min']} / {r['storm']['delay_s']['median']}",
    ),
    (
        "storm: delay p90 / max (s)",
        lambda r: f"{r['storm']['delay_s']['p90']} / {r['storm']['delay_s']['max']}",
    ),
    ("storm: most reconnects in 100 ms", lambda r: r["storm"]["max_in_100ms"]),
    ("storm: broker CPU until all back (s)", lambda r: r["storm"]["broker_cpu_s"]),
]


def table(runs: list[dict[str, Any]]) -> str:
    cells = [[name] + [str(_cell(get, r)) for r in runs] for name, get in ROWS]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    )


def _cell(get: Any, run: dict[str, Any]) -> Any:
    try:
        return get(run)
    except (KeyError, TypeError):
        return "-"
