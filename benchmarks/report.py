"""How every benchmark prints its result: an aligned table for people, then one JSON line (the
last line of output) for comparing runs."""

from __future__ import annotations

import json
import resource
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """The value at quantile ``q`` (0..1) of ``values``, nearest rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def kernel_cpu_s() -> float:
    """System (kernel) CPU seconds of this process so far, all its threads: the part of the CPU
    figures that instruction counts (callgrind) cannot see, the WAL's writes and fsyncs among it."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def latency_ms(latencies: list[float]) -> dict[str, float]:
    """``p50_ms`` and ``p99_ms`` of latencies in seconds, as every benchmark reports them."""
    return {
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
    }


def print_report(result: dict[str, Any]) -> None:
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(result))


def _kernel(sys_cpu: float | None) -> str:
    return "" if sys_cpu is None else f" (kernel {sys_cpu})"


def print_floor_table(rows: list[dict[str, Any]]) -> None:
    """One line per measure: the floor and the engine (``now``) from the same run, their ratio,
    the CPU per unit of each and the target; then the rows as one JSON line. Each row has
    ``measure``, ``unit``, ``floor``, ``now``, ``cpu_unit``, ``floor_cpu``, ``now_cpu`` and
    ``target`` (the ratio aimed at, or None); ``floor_sys_cpu`` and ``now_sys_cpu``, the kernel's
    part of each CPU figure, when known (printed in brackets)."""
    header = ("measure", "floor", "now", "ratio", "CPU floor", "CPU now", "CPU ratio", "target")
    lines = [header]
    for row in rows:
        ratio = row["now"] / row["floor"] if row["floor"] else float("nan")
        cpu_ratio = (
            row["floor_cpu"] / row["now_cpu"] if row["now_cpu"] and row["floor_cpu"] else None
        )
        row["ratio"] = round(ratio, 3)
        row["cpu_ratio"] = None if cpu_ratio is None else round(cpu_ratio, 3)
        lines.append(
            (
                row["measure"],
                f"{row['floor']:,.0f} {row['unit']}",
                f"{row['now']:,.0f} {row['unit']}",
                f"{ratio:.0%}",
                f"{row['floor_cpu']} {row['cpu_unit']}{_kernel(row.get('floor_sys_cpu'))}",
                f"{row['now_cpu']} {row['cpu_unit']}{_kernel(row.get('now_sys_cpu'))}",
                "-" if cpu_ratio is None else f"{cpu_ratio:.0%}",
                "-" if row["target"] is None else f">= {row['target']:.0%}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    print(json.dumps({"benchmark": "floors", "rows": rows}))
