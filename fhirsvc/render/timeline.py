"""The timeline page: lines of therapy, the rules' observations and the findings' evidence on one axis (HTML + SVG)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from hashlib import sha256
from html import escape

from fhirsvc.findings import Finding, Measurement
from fhirsvc.pipeline import PatientResult, ProgramResult
from fhirsvc.terminology.programs import ObservationSpec, Program

# Okabe & Ito, "Color Universal Design" (https://jfly.uni-koeln.de/color/): distinguishable with every common colour
# vision deficiency. Only the members with at least 3:1 contrast on white mark graphics (WCAG 2.2 SC 1.4.11 Non-text
# Contrast); text is near-black or dark blue, at least 4.5:1 (SC 1.4.3). Never colour alone: every mark also differs
# in shape, pattern or dash, and carries a text label.
PAGE_BACKGROUND = "#ffffff"
TEXT_COLOURS = {"text": "#1a1a1a", "muted": "#4d4d4d", "link": "#005a8c"}
MARK_COLOURS = {"blue": "#0072b2", "vermillion": "#d55e00", "green": "#007a5a", "purple": "#8f3f71"}

# Rule parameters that are bounds on an observation (value taken from the loaded program, where `$name` parameters
# and their overrides are already resolved): parameter → (the parameter naming its observation, how it reads).
THRESHOLD_PARAMS: dict[str, tuple[str, str]] = {
    "threshold": ("observation", "threshold"),
    "suppressed_below": ("observation", "suppressed below"),
    "target": ("observation", "target"),
    "contraindicated_below": ("observation", "contraindicated below"),
    "start_below": ("observation", "no start below"),
    "positive_above": ("observation", "positive above"),
    "min_new_lesions": ("lesions_observation", "activity from"),
}
_BAND_PARAMS = frozenset({"target"})  # drawn as the band up to the bound, not just a line

_WIDTH = 960
_LEFT = 190  # room for the lane labels
_RIGHT = 40
_PLOT = _WIDTH - _LEFT - _RIGHT
_BAR = 26
_PANEL = 150
_MARKS = 48
_LABELLED_MARKS = 6
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Bound:
    """A threshold, target or gate drawn across one observation's panel."""

    value: float
    label: str
    param: str
    band: bool


@dataclass(frozen=True)
class _Axis:
    start: date
    end: date

    def x(self, day: date) -> float:
        span = max((self.end - self.start).days, 1)
        return round(_LEFT + _PLOT * (day - self.start).days / span, 1)


def page_file_name(patient: str) -> str:
    """A file name from a patient reference: safe characters only, and a short digest when any were replaced (so
    two ids never share a file)."""
    ident = patient.removeprefix("Patient/")
    safe = _SAFE_NAME.sub("_", ident)[:80].lstrip(".") or "patient"
    if safe != ident:
        safe = f"{safe}-{sha256(ident.encode()).hexdigest()[:10]}"
    return f"{safe}.html"


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _css() -> str:
    colours = "".join(f"--{name}:{value};" for name, value in (TEXT_COLOURS | MARK_COLOURS).items())
    return (
        f":root{{{colours}--background:{PAGE_BACKGROUND}}}"
        "body{font:15px/1.45 system-ui,sans-serif;color:var(--text);background:var(--background);margin:1.5rem;"
        "max-width:70rem}"
        "a{color:var(--link)}h1{font-size:1.4rem}h2{font-size:1.2rem;margin-top:2rem}"
        ".banner{border:2px solid var(--text);padding:.5rem 1rem;font-weight:600}"
        ".banner::before{content:'\\26A0\\FE0E  '}"
        ".muted{color:var(--muted)}svg{width:100%;height:auto;display:block}"
        "svg text{font:12px system-ui,sans-serif;fill:var(--text)}"
        ".finding{border-left:4px solid var(--text);padding:.25rem 1rem;margin:1rem 0}"
        ".finding.no-action{border-left-style:dotted}"
        "table{border-collapse:collapse}td,th{border:1px solid var(--muted);padding:.15rem .5rem;text-align:left}"
        "@media print{body{margin:0;max-width:none}a{color:var(--text)}a[href^='http']::after{content:' <' attr(href) "
        "'>';font-size:.8em}section.program{break-inside:avoid-page}details{display:block}"
        "details>summary{list-style:none}.no-print{display:none}}"
    )


def _defs() -> str:
    """Hatch patterns for the bars (a line differs from its neighbour by pattern, not colour alone)."""
    patterns = []
    for index, (angle, colour) in enumerate([(45, "blue"), (-45, "vermillion"), (0, "green"), (90, "purple")]):
        patterns.append(
            f'<pattern id="hatch-{index}" width="8" height="8" patternUnits="userSpaceOnUse" '
            f'patternTransform="rotate({angle})"><rect width="8" height="8" fill="#ffffff"/>'
            f'<line x1="0" y1="0" x2="0" y2="8" stroke="var(--{colour})" stroke-width="3"/></pattern>'
        )
    return f"<defs>{''.join(patterns)}</defs>"


def _axis_for(result: PatientResult, program: ProgramResult) -> _Axis:
    days = [result.as_of]
    days += [line.start for line in program.lines] + [line.end for line in program.lines if line.end]
    days += [m.date for series in program.series.values() for m in series]
    days += [m.date for f in program.findings for m in f.measurements]
    if result.death and result.death.date:
        days.append(result.death.date)
    first, last = min(days), max(days)
    pad = timedelta(days=max(14, (last - first).days // 30))
    return _Axis(first - pad, last + pad)


def _ticks(axis: _Axis, top: int, bottom: int) -> str:
    """Year and month ticks along the time axis, labelled below it."""
    out = []
    span = (axis.end - axis.start).days
    step = 1 if span <= 400 else 3 if span <= 1200 else 12
    month = date(axis.start.year, axis.start.month, 1)
    while month <= axis.end:
        if month >= axis.start and (month.month - 1) % step == 0:
            x = axis.x(month)
            out.append(f'<line x1="{x}" y1="{top}" x2="{x}" y2="{bottom}" stroke="#d0d0d0" stroke-width="1"/>')
            label = month.strftime("%Y") if month.month == 1 and step == 12 else month.strftime("%b %Y")
            out.append(f'<text x="{x}" y="{bottom + 14}" text-anchor="middle">{label}</text>')
        month = date(month.year + (month.month // 12), month.month % 12 + 1, 1)
    return "".join(out)


def _line_label(line_number: int, drugs: Iterable[str], classes: dict[str, str]) -> str:
    return f"Line {line_number}: " + ", ".join(f"{d} ({classes.get(d, 'unclassified')})" for d in sorted(drugs))


def _bars(program: ProgramResult, axis: _Axis, top: int, as_of: date) -> tuple[str, int]:
    out = []
    y = top
    for line in program.lines:
        x1 = axis.x(line.start)
        x2 = axis.x(line.end or as_of)
        width = max(x2 - x1, 3.0)
        end = line.end.isoformat() if line.end else "ongoing"
        reason = f", ended: {line.end_reason}" if line.end_reason else ""
        planned = ", planned" if line.planned else ""
        label = f"{_line_label(line.number, line.drugs, program.classes)}; {line.start.isoformat()} to {end}{reason}"
        label += planned
        pattern = f"url(#hatch-{(line.number - 1) % 4})"
        dash = ' stroke-dasharray="6 3"' if line.planned else ""
        out.append(
            f'<g class="line-bar" data-line="{line.number}" data-start="{line.start.isoformat()}" '
            f'data-end="{_e(end)}" data-end-reason="{_e(line.end_reason or "")}" role="listitem" '
            f'aria-label="{_e(label)}"><title>{_e(label)}</title>'
            f'<rect x="{x1}" y="{y}" width="{width:.1f}" height="{_BAR}" fill="{pattern}" stroke="var(--text)"'
            f' stroke-width="1.5"{dash}/>'
        )
        if line.end is None:  # an arrow head: the line goes on past the evaluation date
            out.append(f'<path d="M{x2},{y} l10,{_BAR / 2} l-10,{_BAR / 2} z" fill="var(--text)"/>')
        out.append(
            f'<text x="{_LEFT - 8}" y="{y + 17}" text-anchor="end">Line {line.number}</text>'
            f'<text x="{x1 + 4}" y="{y + _BAR + 13}">{_e(", ".join(sorted(line.drugs)))}{_e(reason)}</text></g>'
        )
        y += _BAR + 22
    return "".join(out), y


def _bounds(program: Program, observation: str) -> list[Bound]:
    """The thresholds, targets and gates the program's rules and flags put on an observation, from the loaded YAML."""
    spec = program.observations[observation]
    found: dict[tuple[float, str], Bound] = {}
    for rule in program.rules:
        for param, (names, wording) in THRESHOLD_PARAMS.items():
            value = getattr(rule.params, param, None)
            if getattr(rule.params, names, None) == observation and isinstance(value, int | float):
                label = f"{wording} {_number(value)} {_unit(spec)}".strip()
                found.setdefault((float(value), param), Bound(float(value), label, param, param in _BAND_PARAMS))
    for flag in program.flags.values():
        for criterion in flag.any_of:
            if criterion.observation != observation:
                continue
            for value, wording in ((criterion.below, "below"), (criterion.at_least, "at least")):
                if value is not None:
                    label = f"{flag.label}: {wording} {_number(value)} {_unit(spec)}".strip()
                    found.setdefault((float(value), "flag"), Bound(float(value), label, "flag", False))
    return sorted(found.values(), key=lambda bound: bound.value)


def _number(value: float) -> str:
    return f"{value:g}"


def _unit(spec: ObservationSpec) -> str:
    return "" if spec.unit == "1" else spec.unit


def _scale(values: Sequence[float], log: bool) -> tuple[float, float]:
    if log:
        positive = [v for v in values if v > 0] or [1.0]
        return math.floor(math.log10(min(positive))), math.ceil(math.log10(max(positive)) + 0.01)
    low, high = min(values), max(values)
    if high == low:
        high = low + 1
    margin = (high - low) * 0.1
    return (0.0 if low >= 0 and low - margin < 0 else low - margin), high + margin


def _panel(
    program: ProgramResult,
    observation: str,
    series: list[Measurement],
    evidence: dict[str, list[Finding]],
    axis: _Axis,
    top: int,
) -> str:
    spec = program.program.observations[observation]
    bounds = _bounds(program.program, observation)
    log = bool(spec.log10_codes)
    numbers = [m.value for m in series if m.value is not None] + [b.value for b in bounds]
    low, high = _scale(numbers or [0.0, 1.0], log)
    bottom = top + _PANEL

    def y(value: float) -> float:
        point = math.log10(max(value, 10**low)) if log else value
        return round(bottom - _PANEL * (point - low) / (high - low), 1)

    scale = "log scale" if log else "linear scale"
    name = f"{spec.display} ({_unit(spec) or 'count'}, {scale})"
    out = [
        f'<g class="panel" data-observation="{_e(observation)}" data-scale="{"log" if log else "linear"}" '
        f'role="group" aria-label="{_e(name)}">',
        f'<rect x="{_LEFT}" y="{top}" width="{_PLOT}" height="{_PANEL}" fill="none" stroke="var(--muted)"/>',
        f'<text x="8" y="{top + 14}" font-weight="600">{_e(spec.display)}</text>',
        f'<text x="8" y="{top + 30}">{_e(_unit(spec))}</text>',
        f'<text x="8" y="{top + 46}">{scale}</text>',
    ]
    ticks = [10.0**tick for tick in range(int(low), int(high) + 1)] if log else [low, high]
    for tick in ticks:
        out.append(f'<text x="{_LEFT - 6}" y="{y(tick) + 4}" text-anchor="end">{tick:,.4g}</text>')
    for index, bound in enumerate(bounds):
        level = y(bound.value)
        if bound.band:
            out.append(
                f'<rect class="target-band" data-param="{bound.param}" x="{_LEFT}" y="{level}" width="{_PLOT}" '
                f'height="{round(bottom - level, 1)}" fill="var(--green)" fill-opacity="0.12" role="img" '
                f'aria-label="target band: below {_e(_number(bound.value))} {_e(_unit(spec))}"/>'
            )
        dash = ["8 4", "2 3", "12 3 2 3"][index % 3]
        out.append(
            f'<g class="threshold" data-param="{bound.param}" data-value="{_number(bound.value)}" role="img" '
            f'aria-label="{_e(bound.label)}"><line x1="{_LEFT}" y1="{level}" x2="{_LEFT + _PLOT}" y2="{level}" '
            f'stroke="var(--vermillion)" stroke-width="2" stroke-dasharray="{dash}"/>'
            f'<text x="{_LEFT + 4}" y="{level - 4}">{_e(bound.label)}</text></g>'
        )
    for m in series:
        out.append(_point(m, axis.x(m.date), y(m.value) if m.value is not None else bottom - 4, evidence))
    out.append("</g>")
    return "".join(out)


def _point(m: Measurement, x: float, y: float, evidence: dict[str, list[Finding]]) -> str:
    """A result: a small circle; evidence of a finding: a large diamond with a ring and its value written beside it."""
    cited = evidence.get(m.ref, [])
    label = f"{m.date.isoformat()}: {m.reading}"
    if cited:
        label += "; evidence for: " + "; ".join(f.summary for f in cited)
        ids = " ".join(f.id for f in cited)
        return (
            f'<g class="point evidence" data-ref="{_e(m.ref)}" data-date="{m.date.isoformat()}" data-evidence="true" '
            f'data-finding="{ids}" role="img" aria-label="{_e(label)}"><title>{_e(label)}</title>'
            f'<circle cx="{x}" cy="{y}" r="10" fill="none" stroke="var(--text)" stroke-width="2"/>'
            f'<path d="M{x},{y - 7} l7,7 l-7,7 l-7,-7 z" fill="var(--blue)" stroke="var(--text)"/>'
            f'<text x="{x - 13 if x > _LEFT + _PLOT / 2 else x + 13}" y="{y - 8}" font-weight="600" '
            f'text-anchor="{"end" if x > _LEFT + _PLOT / 2 else "start"}">{_e(m.reading)}</text></g>'
        )
    hollow = m.comparator in ("<", "<=") or m.not_detected
    fill = "#ffffff" if hollow else "var(--blue)"
    return (
        f'<g class="point" data-ref="{_e(m.ref)}" data-date="{m.date.isoformat()}" data-evidence="false" role="img" '
        f'aria-label="{_e(label)}"><title>{_e(label)}</title>'
        f'<circle cx="{x}" cy="{y}" r="4.5" fill="{fill}" stroke="var(--blue)" stroke-width="2"/></g>'
    )


@dataclass(frozen=True)
class _Mark:
    """Something that happened on a day: a coded result, a diagnosis or relapse, other cited evidence."""

    ref: str
    day: date
    text: str


def _event_lane(
    title: str, marks: list[_Mark], evidence: dict[str, list[Finding]], axis: _Axis, top: int, kind: str
) -> str:
    """Marks (triangles, labelled) on a lane of their own; those a finding cites are larger, outlined and bold."""
    out = [
        f'<g class="events" data-lane="{_e(kind)}" role="group" aria-label="{_e(title)}">'
        f'<text x="8" y="{top + 24}" font-weight="600">{_e(title)}</text>'
        f'<line x1="{_LEFT}" y1="{top + 20}" x2="{_LEFT + _PLOT}" y2="{top + 20}" stroke="var(--muted)"/>'
    ]
    for index, mark in enumerate(marks):
        x = axis.x(mark.day)
        label_y = top + 10 if index % 2 == 0 else top + 38  # alternate above and below: neighbours never overlap
        cited = evidence.get(mark.ref, [])
        label = f"{mark.day.isoformat()}: {mark.text}"
        if cited:
            label += "; evidence for: " + "; ".join(f.summary for f in cited)
        size = 9 if cited else 6
        weight = ' font-weight="600"' if cited else ""
        # A crowded lane writes only the evidence beside its marks; every mark keeps its name and tooltip.
        text = mark.text if cited or len(marks) <= _LABELLED_MARKS else ""
        right = x > _LEFT + _PLOT / 2
        ids = " ".join(f.id for f in cited)
        out.append(
            f'<g class="event{" evidence" if cited else ""}" data-ref="{_e(mark.ref)}" '
            f'data-date="{mark.day.isoformat()}"'
            f' data-evidence="{"true" if cited else "false"}" data-finding="{ids}" role="img" aria-label="{_e(label)}">'
            f"<title>{_e(label)}</title>"
            f'<path d="M{x},{top + 20 - size} l{size},{size * 1.6} l-{size * 2},0 z" fill="var(--purple)" '
            f'stroke="var(--text)" stroke-width="{2 if cited else 1}"/>'
            f'<text x="{x - size - 3 if right else x + size + 3}" y="{label_y}" '
            f'text-anchor="{"end" if right else "start"}"'
            f"{weight}>{_e(text)}</text></g>"
        )
    out.append("</g>")
    return "".join(out)


def _evidence_index(program: ProgramResult) -> dict[str, list[Finding]]:
    """Measurement reference → the findings (those that ask for something) that cite it."""
    cited: dict[str, list[Finding]] = {}
    for finding in program.findings:
        if finding.status == "no-action":
            continue
        for ref in finding.evidence:
            cited.setdefault(ref, []).append(finding)
    return cited


def _program_svg(result: PatientResult, program: ProgramResult) -> str:
    """The program's chart, named by its <title> and <desc>. Its role is "group", not "img": an img's children are
    presentational (WAI-ARIA 1.2, https://www.w3.org/TR/wai-aria-1.2/#img), which would hide every labelled bar,
    threshold and evidence mark from assistive technology."""
    axis = _axis_for(result, program)
    evidence = _evidence_index(program)
    observations = program.program.observations
    pid = _e(program.program.id)
    bars, y = _bars(program, axis, 20, result.as_of)
    parts = [f'<g role="list" aria-label="Lines of therapy">{bars}</g>']
    plotted: set[str] = set()
    panels = lanes = 0
    for observation, series in program.series.items():
        if not series:
            continue
        plotted.update(m.ref for m in series)
        if observations[observation].unit == "coded":
            marks = [_Mark(m.ref, m.date, m.shown) for m in series]
            parts.append(_event_lane(observations[observation].display, marks, evidence, axis, y, observation))
            y += _MARKS
            lanes += 1
            continue
        y += 12
        parts.append(_panel(program, observation, series, evidence, axis, y))
        y += _PANEL + 12
        panels += 1
    diagnoses = [
        _Mark(
            d.ref,
            d.onset,
            f"{name.replace('_', ' ')}" + ("" if d.clinical_status == "active" else f" ({d.clinical_status})"),
        )
        for name, d in program.conditions
        if d.onset is not None
    ]
    if diagnoses:
        parts.append(_event_lane("Diagnoses", sorted(diagnoses, key=lambda m: m.day), evidence, axis, y, "diagnoses"))
        plotted.update(m.ref for m in diagnoses)
        y += _MARKS
        lanes += 1
    other: dict[str, _Mark] = {}
    for finding in program.findings:
        for m in finding.measurements:
            if m.ref not in plotted:
                other.setdefault(m.ref, _Mark(m.ref, m.date, m.shown))
    if other:
        parts.append(
            _event_lane("Other results", sorted(other.values(), key=lambda m: m.day), evidence, axis, y, "other")
        )
        y += _MARKS
        lanes += 1
    for day, text, kind in [(result.as_of, "as of", "as-of")] + (
        [(result.death.date, "died", "death")] if result.death is not None and result.death.date is not None else []
    ):
        x = axis.x(day)
        dash = "1 3" if kind == "as-of" else "6 2"
        parts.append(
            f'<g class="{kind}" role="img" aria-label="{text} {day.isoformat()}">'
            f'<line x1="{x}" y1="10" x2="{x}" y2="{y}" stroke="var(--text)" stroke-width="1.5" '
            f'stroke-dasharray="{dash}"/><text x="{x}" y="10" text-anchor="{"end" if kind == "death" else "middle"}">'
            f"{text} {day.isoformat()}</text></g>"
        )
    parts.append(_ticks(axis, 14, y + 4))
    height = y + 24
    desc = (
        f"{len(program.lines)} line(s) of therapy from {axis.start.isoformat()} to {axis.end.isoformat()}; "
        f"{panels} result panel(s) and {lanes} event lane(s); evidence of a finding is drawn larger with a ring or a "
        f"bold outline and its value written beside it; thresholds and targets are dashed lines with labels."
    )
    return (
        f'<svg class="timeline" data-program="{pid}" viewBox="0 0 {_WIDTH} {height}" role="group" '
        f'aria-labelledby="title-{pid} desc-{pid}" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="title-{pid}">{_e(program.program.title)}: lines of therapy and results</title>'
        f'<desc id="desc-{pid}">{_e(desc)}</desc>{_defs()}{"".join(parts)}</svg>'
    )


def _finding_html(finding: Finding) -> str:
    rows = "".join(
        f'<tr data-ref="{_e(m.ref)}"><td>{m.date.isoformat()}</td><td>{_e(m.reading)}</td><td>{_e(m.ref)}</td></tr>'
        for m in finding.measurements
    )
    table = (
        f"<table><caption>Evidence</caption><tr><th>Date</th><th>Result</th><th>Record</th></tr>{rows}</table>"
        if rows
        else ""
    )
    unplotted = [ref for ref in finding.evidence if ref not in {m.ref for m in finding.measurements}]
    records = (
        f'<details class="records"><summary>{len(unplotted)} other record(s) cited</summary>'
        f'<p class="muted">{_e(", ".join(unplotted))}</p></details>'
        if unplotted
        else ""
    )
    advice = "".join(f"<li>{_e(r)}</li>" for r in finding.recommendations)
    guideline = finding.guideline
    return (
        f'<article class="finding {_e(finding.status)}" id="finding-{finding.id}" data-finding="{finding.id}" '
        f'data-rule="{_e(finding.rule)}" data-status="{_e(finding.status)}">'
        f"<h3>{_e(finding.status.replace('-', ' ').capitalize())}: {_e(finding.summary)}</h3>{table}{records}"
        + (f"<ul>{advice}</ul>" if advice else "")
        + f'<p>Guideline: <a href="{_e(guideline.url)}" rel="noreferrer">{_e(guideline.label)}</a></p></article>'
    )


def _program_html(result: PatientResult, program: ProgramResult) -> str:
    shown = [f for f in program.findings if f.status != "no-action"]
    quiet = [f for f in program.findings if f.status == "no-action"]
    current = program.current_line
    parts = [
        f'<section class="program" id="program-{_e(program.program.id)}" data-program="{_e(program.program.id)}">',
        f"<h2>{_e(program.program.title)}</h2>",
        f'<p class="muted">Current line: {current.number if current else "none"}</p>',
        _program_svg(result, program),
        "".join(_finding_html(f) for f in shown),
    ]
    if quiet:
        parts.append(
            f"<details><summary>{len(quiet)} rule(s) with nothing to do</summary>"
            + "".join(_finding_html(f) for f in quiet)
            + "</details>"
        )
    parts.append("</section>")
    return "".join(parts)


def timeline_page(result: PatientResult) -> str:
    """One patient's page: per program the timeline (SVG), then the findings with evidence and guideline links."""
    title = f"Lines of therapy: {result.patient}"
    notes = []
    if result.incomplete:
        why = "; ".join(f"{what}: {reason}" for what, reason in sorted(result.incomplete.items()))
        notes.append(f'<p class="banner incomplete" role="alert">Data may be incomplete ({_e(why)}).</p>')
    if result.death is not None:
        when = result.death.date.isoformat() if result.death.date else "date not recorded"
        notes.append(f'<p class="banner deceased">Deceased ({when}): lines end at death; no findings.</p>')
    if result.skipped:
        notes.append(f'<p class="muted">{result.skipped} malformed resource(s) skipped.</p>')
    body = "".join(_program_html(result, p) for p in result.programs) or "<p>No program applies.</p>"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_css()}</style></head><body>"
        f'<h1>{_e(title)}</h1><p class="muted">Evaluated as of {result.as_of.isoformat()}. This page suggests '
        f"evaluations; it does not order, stop or change any therapy.</p>{''.join(notes)}{body}</body></html>"
    )


@dataclass(frozen=True)
class IndexEntry:
    """What the index shows of one written page: a few strings, so a large population is not held in memory."""

    file_name: str
    patient: str
    programs: str
    asks: str


def index_entry(file_name: str, result: PatientResult) -> IndexEntry:
    asks = ", ".join(sorted({f.status for f in result.actionable})) or "nothing to do"
    asks += " (data may be incomplete)" if result.incomplete else ""
    asks += " (deceased)" if result.death else ""
    return IndexEntry(file_name, result.patient, ", ".join(p.program.id for p in result.programs) or "none", asks)


def index_page(entries: Sequence[IndexEntry]) -> str:
    """The list of written pages, with what each patient's findings ask for."""
    rows = "".join(
        f'<tr><td><a href="{_e(e.file_name)}">{_e(e.patient)}</a></td><td>{_e(e.programs)}</td>'
        f"<td>{_e(e.asks)}</td></tr>"
        for e in entries
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Patients</title>'
        f"<style>{_css()}</style></head><body><h1>Patients</h1>"
        f"<table><tr><th>Patient</th><th>Programs</th><th>Asks for</th></tr>{rows}</table></body></html>"
    )
