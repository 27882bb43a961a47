"""The picture of a run: a self-contained HTML page with one SVG timeline per resource — its
true runs above each consumer's billed segments — cleanups and purges as dashed vertical lines,
and every finding boxed where it happened (hover for the witness). No scripts, no external
files."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from html import escape

from usageledger.reconstruct import Footprint, Segment
from usageledger.simulator.checker import Finding, Severity, aware
from usageledger.simulator.run import RunResult

WIDTH = 1340
LEFT = 190
RIGHT = 12
LANE = 16
LANE_GAP = 3
HEADER = 16
BLOCK_GAP = 12
AXIS = 34
TRUE_COLOUR = "#3b4a5a"
BILLED_COLOUR = "#4e79a7"
FLAGGED_COLOUR = "#a0b9d6"
SEVERITY_COLOURS = {
    Severity.INVALID: "#d62728",
    Severity.DEVIATION: "#f28e2b",
    Severity.EXPECTED: "#7f7f7f",
}
CLEANUP_COLOURS = {"old": "#d62728", "purge": "#8e44ad"}
LINE_COLOUR = "#9a9a9a"


def _x(moment: datetime, lo: datetime, hi: datetime) -> float:
    span = (hi - lo).total_seconds() or 1.0
    return LEFT + (WIDTH - LEFT - RIGHT) * (aware(moment) - lo).total_seconds() / span


def footprint_label(fp: Footprint, plans: Mapping[str, str]) -> str:
    """`2×512 MB`, or the plan's name for a service instance."""
    if fp.service_plan_guid is not None or fp.instance_count is None:
        guid = fp.service_plan_guid or ""
        return plans.get(guid, f"plan {guid[:8]}")
    return f"{fp.instance_count}×{fp.memory_in_mb_per_instance} MB"


def _flags(seg: Segment) -> list[str]:
    flags = []
    if seg.start_is_lower_bound:
        flags.append("lower-bound start")
    if seg.end_is_repaired:
        flags.append("repaired end")
    if seg.gap_close:
        flags.append("gap close")
    if seg.approximate_size:
        flags.append("approximate size")
    return flags


def _bar(
    x1: float, x2: float, y: float, fill: str, text: str, tip: str, *, hatched: bool = False
) -> str:
    """One bar; its footprint is written inside when it fits."""
    width = max(1.5, x2 - x1)
    parts = [
        f'<rect x="{x1:.1f}" y="{y:.1f}" width="{width:.1f}" height="{LANE}" fill="{fill}" '
        f'stroke="#fff" stroke-width="0.8"><title>{escape(tip)}</title></rect>'
    ]
    if hatched:
        parts.append(
            f'<rect x="{x1:.1f}" y="{y:.1f}" width="{width:.1f}" height="{LANE}" '
            'fill="url(#flagged)" pointer-events="none"/>'
        )
    if width > 7 * len(text) + 6:
        colour = "#fff" if fill in (TRUE_COLOUR, BILLED_COLOUR) else "#1d2b3a"
        parts.append(
            f'<text x="{x1 + 4:.1f}" y="{y + LANE - 4:.1f}" fill="{colour}" font-size="11" '
            f'pointer-events="none">{escape(text)}</text>'
        )
    return "".join(parts)


def _timeline(result: RunResult) -> str:
    truth = result.truth
    plans = result.plan_names
    start = aware(result.start)
    horizon = aware(truth.horizon)
    lo = min([start] + [aware(s.start) for s in truth.segments])
    hi = horizon
    guids = sorted(
        {s.guid for s in truth.segments}
        | {s.guid for v in result.consumers for s in v.ledger.segments if s.kind != "staging"},
        key=lambda g: (truth.kinds.get(g, "~"), _natural(truth.labels.get(g, g))),
    )
    findings_by_guid: dict[str, list[Finding]] = {}
    for f in result.report.findings:
        if f.guid is not None:
            findings_by_guid.setdefault(f.guid, []).append(f)
    lanes = 1 + len(result.consumers)
    block = HEADER + lanes * (LANE + LANE_GAP) + BLOCK_GAP
    height = AXIS + block * len(guids) + 10
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        '<defs><pattern id="flagged" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><line x1="0" y1="0" x2="0" y2="6" stroke="#fff" '
        'stroke-width="2" stroke-opacity="0.8"/></pattern></defs>',
    ]
    # Time axis: a tick every ten days, day 0 the scenario's start.
    day = 86_400
    first = int((lo - start).total_seconds() // (10 * day)) * 10
    last = int((hi - start).total_seconds() // day)
    for d in range(first, last + 1, 10):
        moment = start + timedelta(days=d)
        if moment < lo:
            continue
        x = _x(moment, lo, hi)
        stroke = "#bbb" if d == 0 else "#e6e6e6"
        anchor = "end" if x > WIDTH - RIGHT - 25 else "middle"  # the last label stays inside
        out.append(
            f'<line x1="{x:.1f}" y1="{AXIS - 6}" x2="{x:.1f}" y2="{height - 4}" '
            f'stroke="{stroke}"/>'
            f'<text x="{x:.1f}" y="{AXIS - 10}" text-anchor="{anchor}" fill="#444">day {d}</text>'
        )
    for obs in result.cleanups:
        moment = (
            obs.cutoff + timedelta(days=result.scenario.cutoff_age_in_days)
            if obs.variant != "purge"
            else obs.cutoff
        )
        x = _x(moment, lo, hi)
        colour = CLEANUP_COLOURS.get(obs.variant, LINE_COLOUR)
        out.append(
            f'<line x1="{x:.1f}" y1="{AXIS - 6}" x2="{x:.1f}" y2="{height - 4}" '
            f'stroke="{colour}" stroke-width="1.2" stroke-dasharray="4,4">'
            f"<title>{escape(obs.variant)} cleanup by {escape(obs.actor)}</title></line>"
        )
    y = AXIS
    for guid in guids:
        label = truth.labels.get(guid, guid[:8])
        kind = truth.kinds.get(guid, "")
        mine = findings_by_guid.get(guid, [])
        summary = _summary(mine)
        out.append(
            f'<text x="4" y="{y + HEADER - 4}" font-weight="bold" fill="#222">'
            f"{escape(kind)} {escape(label)}</text>"
        )
        if summary:
            out.append(f'<text x="{LEFT}" y="{y + HEADER - 4}" font-size="11">{summary}</text>')
        ly = y + HEADER
        out.append(
            f'<text x="{LEFT - 6}" y="{ly + LANE - 4}" text-anchor="end" fill="#333">'
            "true runs</text>"
        )
        for s in truth.segments_of(guid):
            x1, x2 = _x(s.start, lo, hi), _x(s.end or horizon, lo, hi)
            text = footprint_label(s.footprint, plans)
            out.append(_bar(x1, x2, ly, TRUE_COLOUR, text, f"{label} ran at {text}"))
        for index, view in enumerate(result.consumers, start=1):
            ly = y + HEADER + index * (LANE + LANE_GAP)
            out.append(
                f'<text x="{LEFT - 6}" y="{ly + LANE - 4}" text-anchor="end" fill="#555">'
                f"billed by {escape(view.name)}</text>"
            )
            for seg in view.ledger.segments_of(guid):
                x1, x2 = _x(seg.start, lo, hi), _x(seg.end or horizon, lo, hi)
                flags = _flags(seg)
                text = footprint_label(seg.footprint, plans)
                tip = (
                    f"{view.name} billed {label} at {text}, events #{seg.opened_by_id}.."
                    f"#{seg.closed_by_id or 'still open'}"
                    + (f" ({', '.join(flags)})" if flags else "")
                )
                fill = FLAGGED_COLOUR if flags else BILLED_COLOUR
                out.append(_bar(x1, x2, ly, fill, text, tip, hatched=bool(flags)))
        for f in mine:
            lane = 0
            if f.consumer is not None:
                lane = next(
                    (i for i, v in enumerate(result.consumers, start=1) if v.name == f.consumer),
                    0,
                )
            fy = y + HEADER + lane * (LANE + LANE_GAP)
            x1 = _x(f.start or horizon, lo, hi)
            x2 = _x(f.end or f.start or horizon, lo, hi)
            width = 2.5 if f.severity is Severity.INVALID else 1.8
            out.append(
                f'<rect x="{x1 - 1:.1f}" y="{fy - 1.5:.1f}" width="{max(4.0, x2 - x1 + 2):.1f}" '
                f'height="{LANE + 3}" fill="none" stroke="{SEVERITY_COLOURS[f.severity]}" '
                f'stroke-width="{width}"><title>{escape(f.invariant)} {escape(f.severity.value)}'
                f"{' (' + escape(f.deviation) + ')' if f.deviation else ''}: "
                f"{escape(f.witness)}</title></rect>"
            )
        y += block
    out.append("</svg>")
    return "".join(out)


def _natural(label: str) -> tuple[str, int]:
    """`proc-2` before `proc-10`."""
    stem, _, number = label.rpartition("-")
    return (stem, int(number)) if number.isdigit() else (label, 0)


def _summary(findings: list[Finding]) -> str:
    """`1 invalid · 2 deviations` in the severity colours, empty when nothing was found."""
    parts = []
    for severity, word in (
        (Severity.INVALID, "invalid"),
        (Severity.DEVIATION, "deviation"),
        (Severity.EXPECTED, "expected"),
    ):
        n = sum(1 for f in findings if f.severity is severity)
        if n:
            invariants = ", ".join(
                sorted({f.invariant for f in findings if f.severity is severity})
            )
            plural = "s" if n > 1 and word == "deviation" else ""
            parts.append(
                f'<tspan fill="{SEVERITY_COLOURS[severity]}">{n} {word}{plural} '
                f"({escape(invariants)})</tspan>"
            )
    return " · ".join(parts)


def _swatch(colour: str, text: str, *, box: bool = False, hatched: bool = False) -> str:
    if box:
        style = f"border:2px solid {colour};background:#fff"
    elif hatched:
        style = (
            f"background:repeating-linear-gradient(45deg,{colour} 0 4px,#fff 4px 6px);"
            f"border:1px solid {colour}"
        )
    else:
        style = f"background:{colour}"
    return f'<span class="key"><span class="sw" style="{style}"></span>{escape(text)}</span>'


def _line_swatch(colour: str, text: str) -> str:
    return (
        f'<span class="key"><span class="ln" style="border-left:2px dashed {colour}"></span>'
        f"{escape(text)}</span>"
    )


def render_html(result: RunResult) -> str:
    """The whole page for `result`."""
    verdict = result.report.verdict.value
    verdict_colour = {"valid": "#2e7d32", "invalid": "#d62728"}.get(verdict, "#f28e2b")
    legend = "".join(
        [
            _swatch(TRUE_COLOUR, "true run (what the platform really ran)"),
            _swatch(BILLED_COLOUR, "billed segment"),
            _swatch(
                FLAGGED_COLOUR,
                "billed, flagged: lower-bound start, repaired end, gap close or approximate size",
                hatched=True,
            ),
            _swatch(SEVERITY_COLOURS[Severity.INVALID], "invalid finding", box=True),
            _swatch(SEVERITY_COLOURS[Severity.DEVIATION], "known bounded deviation", box=True),
            _swatch(SEVERITY_COLOURS[Severity.EXPECTED], "expected (old cleanup, purge)", box=True),
            _line_swatch(LINE_COLOUR, "cleanup"),
            _line_swatch(CLEANUP_COLOURS["old"], "old cleanup"),
            _line_swatch(CLEANUP_COLOURS["purge"], "purge-and-reseed"),
        ]
    )
    rows = "".join(
        f"<tr><td>{escape(r.invariant)}</td>"
        f'<td style="color:{"#d62728" if r.verdict.value == "invalid" else "inherit"}">'
        f"{escape(r.verdict.value)}</td>"
        f"<td>{r.invalid}</td><td>{r.deviations}</td><td>{r.expected}</td></tr>"
        for r in result.report.invariants
    )
    listed = [f for f in result.report.findings if f.severity is not Severity.DEVIATION]
    listed.sort(key=lambda f: (f.severity is not Severity.INVALID, f.invariant))
    items = "".join(
        f'<li><b style="color:{SEVERITY_COLOURS[f.severity]}">{escape(f.invariant)} '
        f"{escape(f.severity.value)}</b>: {escape(f.witness)}</li>"
        for f in listed[:200]
    )
    deviations = result.report.deviation_totals()
    deviation_rows = "".join(
        f"<tr><td>{escape(name)}</td><td>{n}</td><td>{seconds / 86_400:.1f} days</td></tr>"
        for name, (n, seconds) in sorted(deviations.items())
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>usageledger simulate — seed {result.scenario.seed}: {escape(verdict)}</title>"
        "<style>body{font-family:sans-serif;margin:16px;color:#222}"
        "td,th{padding:2px 10px;text-align:left}table{border-collapse:collapse;margin-right:24px}"
        "tr:nth-child(even){background:#f4f4f4}.tables{display:flex;align-items:flex-start}"
        ".key{display:inline-flex;align-items:center;margin:2px 14px 2px 0;font-size:13px}"
        ".sw{display:inline-block;width:26px;height:12px;margin-right:5px}"
        ".ln{display:inline-block;height:14px;margin:0 6px 0 4px}"
        "li{margin-bottom:4px}</style>"
        "</head><body>"
        f"<h1>Simulation seed {result.scenario.seed} on {escape(result.backend)}: "
        f'<span style="color:{verdict_colour}">{escape(verdict)}</span></h1>'
        "<p>Per resource, its true runs (top lane) against what each consumer billed. Hover a "
        "bar for its events, a box for the finding's witness.</p>"
        f"<p>{legend}</p>"
        "<div class='tables'><table><tr><th>invariant</th><th>verdict</th>"
        f"<th>invalid</th><th>deviations</th><th>expected</th></tr>{rows}</table>"
        "<table><tr><th>known bounded deviation</th><th>count</th><th>size</th></tr>"
        f"{deviation_rows or '<tr><td>none</td><td></td><td></td></tr>'}</table></div>"
        f"{_timeline(result)}"
        f"<h2>Findings (invalid and expected)</h2><ul>{items or '<li>none</li>'}</ul>"
        "</body></html>"
    )
