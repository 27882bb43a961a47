"""A run's report as one JSON document, and the files a run leaves behind (`--out DIR`): the
scenario with its recorded schedule (replayable), the history, the report and the picture."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

from usageledger.simulator.checker import INVARIANTS, Severity
from usageledger.simulator.picture import render_html
from usageledger.simulator.run import BACKEND_CANNOT, BACKEND_CAPABILITIES, RunResult

REPORT_SCHEMA_VERSION = 1
#: How many findings the JSON report lists in full (the rest are counted).
MAX_FINDINGS = 200


def never_exercised(result: RunResult) -> list[str]:
    """Coverage counters that stayed at zero: races this run did not exercise (S9)."""
    return [key for key, count in result.coverage.items() if count == 0]


def report_document(result: RunResult, files: dict[str, Path] | None = None) -> dict[str, Any]:
    """The run as one JSON-ready document (snake_case keys)."""
    report = result.report
    important = [f for f in report.findings if f.severity is not Severity.DEVIATION]
    document: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "verdict": report.verdict.value,
        "seed": result.scenario.seed,
        "backend": result.backend,
        "strategy": result.scenario.strategy,
        "elapsed_seconds": round(result.elapsed_seconds, 3),
        "steps": result.stats.steps,
        "ticks": result.stats.ticks,
        "kills": result.stats.kills,
        "longest_transaction_steps": result.stats.longest_transaction,
        "counts": _json_counts(result.counts),
        "invariants": [
            {
                "invariant": r.invariant,
                "rule": INVARIANTS[r.invariant],
                "verdict": r.verdict.value,
                "invalid": r.invalid,
                "deviations": r.deviations,
                "expected": r.expected,
                "note": r.note or None,
            }
            for r in report.invariants
        ],
        "deviations": {
            _snake(name): {"description": name, "count": count, "total_seconds": round(seconds, 3)}
            for name, (count, seconds) in sorted(report.deviation_totals().items())
        },
        "findings": [f.to_json() for f in important[:MAX_FINDINGS]],
        "findings_not_listed": max(0, len(important) - MAX_FINDINGS),
        "coverage": dict(result.coverage),
        "never_exercised": never_exercised(result),
        "backend_can_show": list(BACKEND_CAPABILITIES.get(result.backend, ())),
        "backend_cannot_show": list(BACKEND_CANNOT.get(result.backend, ())),
    }
    if files is not None:
        document["files"] = {name: str(path) for name, path in files.items()}
    return document


def _snake(name: str) -> str:
    """A deviation's name as a JSON key (§9, snake_case): `lower-bound start` becomes
    `lower_bound_start`."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _json_counts(counts: Mapping[str, int]) -> dict[str, Any]:
    """The run's counts with snake_case keys (§9): a per-consumer count such as
    `segments_billed[consumer-1-reference]` becomes `{"segments_billed": {name: n}}`."""
    document: dict[str, Any] = {}
    for key, value in counts.items():
        base, bracket, inner = key.partition("[")
        if bracket:
            document.setdefault(base, {})[inner.removesuffix("]")] = value
        else:
            document[key] = value
    return document


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if attrs.has(type(value)):
        return attrs.asdict(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def write_outputs(result: RunResult, out: Path) -> dict[str, Path]:
    """Write scenario.json, history.jsonl, report.json and timeline.html into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "scenario": out / "scenario.json",
        "history": out / "history.jsonl",
        "report": out / "report.json",
        "picture": out / "timeline.html",
    }
    files["scenario"].write_text(result.scenario.dumps() + "\n")
    with files["history"].open("w") as handle:
        for entry in result.history:
            handle.write(json.dumps(entry.to_json(), default=_default) + "\n")
    files["report"].write_text(
        json.dumps(report_document(result, files), indent=2, default=_default) + "\n"
    )
    files["picture"].write_text(render_html(result))
    return files


def dumps_document(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, default=_default)
