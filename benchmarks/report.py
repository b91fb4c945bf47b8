"""How every benchmark prints its result: an aligned table for people, then one JSON line (the
last line of output) for comparing runs."""

from __future__ import annotations

import json
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """The value at quantile ``q`` (0..1) of ``values``, nearest rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


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
