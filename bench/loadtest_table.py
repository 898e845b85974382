"""One table from several ``lipar-loadtest`` reports of a GPU run (bench/gpu_loadtest.sh).

Per run: sessions, clip kind, LIPAR, received fps per session (min / mean) and together, dropped %, client-
measured latency p50 / p95, the longest time to first frame (and its ICE + DTLS part), frame gaps (share under 2x
the mean), the worst block stall (the server's slowest block after a session's first over its median block), the
sessions' mean prune ratio (the server's last block of each), and GPU busy % (mean ``utilization.gpu`` of
``nvidia-smi`` samples taken during the run's wall-clock window, one figure per GPU when the samples carry the GPU
index: ``--query-gpu=timestamp,index,utilization.gpu,memory.used``).

Usage: python bench/loadtest_table.py RUNS_DIR [--smi smi.csv] [--server-log server.log] --out table.md
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("loadtest_table")


def read_smi(path: Path | None) -> list[tuple[float, int, float]]:
    """(unix time, GPU index, utilisation %) samples of ``nvidia-smi --query-gpu=timestamp,[index,]
    utilization.gpu,memory.used -lms`` (without the index column every sample is GPU 0's)."""
    if path is None or not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            t = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            if len(parts) >= 4:
                out.append((t, int(parts[1]), float(parts[2])))
            else:
                out.append((t, 0, float(parts[1])))
        except (ValueError, IndexError):
            continue
    return out


def busy(samples: list[tuple[float, int, float]], start: float, end: float) -> dict[int, float]:
    """Mean utilisation per GPU index over [start, end] (GPUs without samples there are left out)."""
    per: dict[int, list[float]] = {}
    for t, gpu, u in samples:
        if start <= t <= end:
            per.setdefault(gpu, []).append(u)
    return {gpu: sum(us) / len(us) for gpu, us in sorted(per.items())}


def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def row(report: dict[str, Any], samples: list[tuple[float, int, float]]) -> str:
    st, agg = report["settings"], report["aggregate"]
    label = report.get("label") or ""
    lipar = "off" if "LIPAR-off" in label else "on"
    kind = next((k for k in ("webcam", "incar", "moving") if k in label), "-")
    lat = agg.get("latency_ms") or {}
    shares = [
        s["client"]["gaps"]["no_burst_share"]
        for s in report["sessions"]
        if (s.get("client") or {}).get("gaps", {}).get("no_burst_share") is not None
    ]
    per_gpu = busy(samples, report["wall_start"], report["wall_end"])
    gpu = " / ".join(f"{u:.0f}" for u in per_gpu.values()) or "-"
    ratios = [(s.get("server") or {}).get("prune_ratio") for s in report["sessions"]]
    known = [r for r in ratios if r is not None]
    prune = sum(known) / len(known) if known and lipar == "on" else None
    return (
        f"| {label.split()[0] if label else '-'} | {st['seconds']:g} | {agg['sessions_connected']}/{st['sessions']} | "
        f"{kind} | {lipar} | "
        f"{_f(agg.get('received_fps_min'))} / {_f(agg.get('received_fps_mean'))} | "
        f"{_f(agg.get('received_fps_total'))} | {_f(agg.get('dropped_pct_mean'))} | "
        f"{_f(lat.get('p50'), 0)} / {_f(lat.get('p95'), 0)} | {_f(agg.get('ttff_ms_max'), 0)} "
        f"({_f(agg.get('connect_ms_max'), 0)}) | {_f(min(shares) if shares else None, 3)} | "
        f"{_f(agg.get('block_ratio_max'), 2)} | {_f(prune, 2)} | {gpu} |"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path)
    p.add_argument("--smi", type=Path)
    p.add_argument("--server-log", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    logging.basicConfig(level="INFO", format="%(message)s")
    samples = read_smi(args.smi)
    lines = [
        "| run | s | sessions | clips | LIPAR | received fps per session (min / mean) | together | dropped % | "
        "latency p50 / p95 ms | TTFF max ms (connect) | gaps < 2x mean (min share) | block max / p50 | "
        "prune ratio | GPU busy % (per GPU) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    reports = []
    for path in sorted(args.runs.glob("*.json")):
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            log.warning("skipping %s: %s", path, e)
            continue
        if isinstance(report, dict) and "wall_start" in report and "aggregate" in report:
            reports.append(report)
        else:
            log.warning("skipping %s: not a lipar-loadtest report", path)
    for r in sorted(reports, key=lambda r: r["wall_start"]):
        lines.append(row(r, samples))
    if args.server_log is not None and args.server_log.is_file():
        text = args.server_log.read_text(errors="replace")
        warm = re.findall(r"captured \d+ CUDA graphs in [\d.]+ s \(warm-up [\d.]+ s\)", text)
        if warm:
            lines.append(f"\nWorker warm-up: {warm[-1]}.")
    args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
