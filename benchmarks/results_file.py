"""Where a benchmark writes its figures: ``artifacts/benchmarks/<name>.json`` (not in the repository)."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_results(name: str, results: dict) -> Path:
    """Write ``results`` as JSON to ``artifacts/benchmarks/<name>.json`` and say where."""
    out = ROOT / "artifacts" / "benchmarks" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written to {out}")
    return out
