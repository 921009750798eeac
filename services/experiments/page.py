"""The report page: one HTML document with the report's numbers and server-rendered SVG plots
(per-arm CTR with its interval; cumulative lift or preference with its band over time). No
JavaScript: a browser, a screenshot tool or `curl` sees the same page. Every number carries a
`data-field` attribute naming where it is in the JSON report, so a test can compare them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from html import escape

from services.experiments.report import ExperimentReport, TimelinePoint

WIDTH, HEIGHT, PAD = 640, 220, 40
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")
P = ".3g"  # p-values keep their first digits: 1.9e-15 is not 0.000000


def render(report: ExperimentReport) -> str:
    e = report.experiment
    rows = "".join(
        f"<tr><td>{escape(a.name)}</td><td>{escape(a.version or 'current')}</td>"
        f"{_cell(f'arms.{i}.impressions', a.impressions, 'd')}{_cell(f'arms.{i}.clicks', a.clicks, 'd')}"
        f"{_cell(f'arms.{i}.ctr', a.ctr)}<td>[{_num(f'arms.{i}.ctr_low', a.ctr_low)}, {_num(f'arms.{i}.ctr_high', a.ctr_high)}]</td>"
        f"{_cell(f'arms.{i}.lift', a.lift)}<td>{_range(f'arms.{i}.lift', a.lift_low, a.lift_high)}</td>"
        f"{_cell(f'arms.{i}.p_value', a.p_value, P)}{_cell(f'arms.{i}.users', a.users, 'd')}"
        f"{_cell(f'arms.{i}.user_lift', a.user_lift)}<td>{_range(f'arms.{i}.user_lift', a.user_lift_low, a.user_lift_high)}</td>"
        f"{_cell(f'arms.{i}.user_p_value', a.user_p_value, P)}<td>{escape(a.stopped or '')}</td></tr>"
        for i, a in enumerate(report.arms)
    )
    comparisons = "".join(
        f"<tr><td>{escape(c.a)} vs {escape(c.b)}</td>{_cell(f'comparisons.{i}.wins_a', c.wins_a, 'd')}"
        f"{_cell(f'comparisons.{i}.wins_b', c.wins_b, 'd')}{_cell(f'comparisons.{i}.ties', c.ties, 'd')}"
        f"{_cell(f'comparisons.{i}.preference', c.preference)}<td>[{_num(f'comparisons.{i}.low', c.low)}, "
        f"{_num(f'comparisons.{i}.high', c.high)}]</td>{_cell(f'comparisons.{i}.sign_p', c.sign_p, P)}"
        f"<td>{escape(c.credit)}</td>{_cell(f'comparisons.{i}.credit_difference', c.credit_difference)}"
        f"<td>[{_num(f'comparisons.{i}.credit_low', c.credit_low)}, {_num(f'comparisons.{i}.credit_high', c.credit_high)}]</td>"
        f"{_cell(f'comparisons.{i}.credit_p', c.credit_p, P)}</tr>"
        for i, c in enumerate(report.comparisons)
    )
    if report.srm_p is not None:
        srm = (f"<p>Sample-ratio check: p = {_num('srm_p', report.srm_p, P)}"
               f"{' <strong>SRM ALARM</strong>' if report.srm_alarm else ''}</p>")
    else:
        srm = f"<p>Sample-ratio check: withheld, {escape(report.srm_withheld)}</p>" if report.srm_withheld else ""
    trend = "lift:" if e.kind == "ab" else "preference:"
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Experiment {escape(e.id)}</title>
<style>body{{font-family:sans-serif;margin:24px}}td,th{{padding:2px 10px;text-align:right}}</style></head>
<body><h1>Experiment {escape(e.id)}</h1>
<p>{escape(e.kind)}{'' if e.kind == 'ab' else ' (' + escape(e.method) + ')'}, layer {escape(e.layer)},
status {escape(e.status)}, traffic {e.traffic:g}; report of {report.generated_at.isoformat()}</p>
<table><tr><th>arm</th><th>version</th><th>impressions</th><th>clicks</th><th>CTR</th><th>95% CI</th>
<th>lift</th><th>95% CI</th><th>p</th><th>users</th><th>lift per user</th><th>95% CI</th><th>p per user</th>
<th>stopped</th></tr>{rows}</table>
{srm}
{'<h2>Interleaving preference (per user)</h2><table><tr><th></th><th>wins A</th><th>wins B</th><th>ties</th><th>Δ</th><th>95% CI</th><th>sign test p</th><th>credit</th><th>count credit Δ</th><th>95% CI</th><th>t-test p</th></tr>' + comparisons + '</table>' if comparisons else ''}
<h2>CTR per arm</h2>{_bars(report)}
<h2>Cumulative {'lift' if e.kind == 'ab' else 'preference'} with its 95% band</h2>
{_lines([p for p in report.timeline if p.series.startswith(trend)], [a.name for a in report.arms])}
<p><em>{escape(report.caveat)}</em></p>
</body></html>"""


def _num(field: str, value: float | int | None, fmt: str = ".6f") -> str:
    text = "–" if value is None else format(value, fmt)
    return f'<span data-field="{field}">{text}</span>'


def _cell(field: str, value: float | int | None, fmt: str = ".6f") -> str:
    return f"<td>{_num(field, value, fmt)}</td>"


def _range(prefix: str, low: float | None, high: float | None) -> str:
    if low is None or high is None:
        return ""
    return f"[{_num(prefix + '_low', low)}, {_num(prefix + '_high', high)}]"


def _bars(report: ExperimentReport) -> str:
    top = max([a.ctr_high for a in report.arms] + [1e-9])
    width = (WIDTH - 2 * PAD) / max(len(report.arms), 1)
    parts = []
    for i, arm in enumerate(report.arms):
        x = PAD + i * width
        y = _y(arm.ctr, 0, top)
        parts.append(f'<rect x="{x + width * 0.2:.1f}" y="{y:.1f}" width="{width * 0.6:.1f}" '
                     f'height="{HEIGHT - PAD - y:.1f}" fill="{_colour(i)}"/>')
        parts.append(f'<line x1="{x + width / 2:.1f}" x2="{x + width / 2:.1f}" y1="{_y(arm.ctr_low, 0, top):.1f}" '
                     f'y2="{_y(arm.ctr_high, 0, top):.1f}" stroke="black" stroke-width="2"/>')
        parts.append(f'<text x="{x + width / 2:.1f}" y="{HEIGHT - PAD + 15}" text-anchor="middle">{escape(arm.name)}</text>')
    return _svg(parts, f"0 to {top:.4f}")


def _colour(arm: int) -> str:
    """The colour of the arm at index `arm`, in every plot."""
    return COLOURS[arm % len(COLOURS)]


def _lines(points: Sequence[TimelinePoint], arms: list[str]) -> str:
    """Each series (`<kind>:<arm>`) against time, in its arm's colour, with its band."""
    if not points:
        return "<p>No data yet.</p>"
    low = min(min(p.low for p in points), 0.0)
    high = max(max(p.high for p in points), 0.0)
    x_of = _time_axis([p.at for p in points])
    parts = [f'<line x1="{PAD}" x2="{WIDTH - PAD}" y1="{_y(0, low, high):.1f}" y2="{_y(0, low, high):.1f}" stroke="#999"/>']
    index = {arm: i for i, arm in enumerate(arms)}
    for n, name in enumerate(sorted({p.series for p in points})):
        colour = _colour(index.get(name.split(":", 1)[-1], n))
        parts += _series([p for p in points if p.series == name], x_of, low, high, colour)
        parts.append(f'<text x="{WIDTH - PAD}" y="{15 + 15 * n}" text-anchor="end" fill="{colour}">{escape(name)}</text>')
    parts += _time_labels(min(p.at for p in points), max(p.at for p in points), x_of)
    return _svg(parts, f"{low:.4f} to {high:.4f}")


def _time_axis(times: list[datetime]) -> Callable[[datetime], float]:
    """x of a time, linear between the first and the last; a single time in the middle."""
    first, span = min(times), (max(times) - min(times)).total_seconds()
    if span == 0:
        return lambda at: WIDTH / 2
    return lambda at: PAD + (WIDTH - 2 * PAD) * (at - first).total_seconds() / span


def _series(points: list[TimelinePoint], x_of: Callable[[datetime], float], low: float, high: float,
            colour: str) -> list[str]:
    """A line with its band; a single point as a marker with its error bar (a line of one vertex
    draws nothing)."""
    if len(points) == 1:
        x, p = x_of(points[0].at), points[0]
        return [f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_y(p.low, low, high):.1f}" y2="{_y(p.high, low, high):.1f}" '
                f'stroke="{colour}" stroke-width="2"/>',
                f'<circle cx="{x:.1f}" cy="{_y(p.value, low, high):.1f}" r="4" fill="{colour}"/>']
    band = [f"{x_of(p.at):.1f},{_y(p.high, low, high):.1f}" for p in points]
    band += [f"{x_of(p.at):.1f},{_y(p.low, low, high):.1f}" for p in reversed(points)]
    line = " ".join(f"{x_of(p.at):.1f},{_y(p.value, low, high):.1f}" for p in points)
    return [f'<polygon points="{" ".join(band)}" fill="{colour}" fill-opacity="0.2"/>',
            f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>']


def _time_labels(first: datetime, last: datetime, x_of: Callable[[datetime], float]) -> list[str]:
    """The first and the last time under the x axis (one label for a single time)."""
    ends = [(first, "start"), (last, "end")] if last > first else [(first, "middle")]
    return [f'<text x="{x_of(at):.1f}" y="{HEIGHT - PAD + 15}" text-anchor="{anchor}">{at:%Y-%m-%d %H:%M} UTC</text>'
            for at, anchor in ends]


def _y(value: float, low: float, high: float) -> float:
    span = (high - low) or 1.0
    return HEIGHT - PAD - (value - low) / span * (HEIGHT - 2 * PAD)


def _svg(parts: list[str], scale: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img">'
            f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white" stroke="#ccc"/>{"".join(parts)}'
            f'<text x="{PAD}" y="15">y: {scale}</text></svg>')
