"""The dashboard: one self-contained static HTML page from the history (inline SVG, nothing fetched).

Per rack, machine and plan: end-to-end p50/p99 over runs with the CPU reference as a dashed line and
change points marked; the per-hop critical-path breakdown of every run as stacked bars; the latest
run's per-hop table; regressions listed at the top. Opening it needs no network and no server.

    splitrack dashboard --db results.sqlite -o site/      # then open site/index.html
"""
from __future__ import annotations

import html
import math
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from harness.results import regress
from harness.results.history import History, HistoryError, SeriesKey

W, H = 860, 300
PAD_L, PAD_R, PAD_T, PAD_B = 90, 170, 20, 64
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"]
TREND_METRICS = ("single p50", "single p99", "stream p50", "stream p99")


def _esc(s: object) -> str:
    return html.escape(str(s), quote=True)


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _nice_max(v: float) -> float:
    if v <= 0 or not math.isfinite(v):
        return 1.0
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * e >= v:
            return m * e
    return 10 * e


def _frame(title: str, ymax: float, unit: str, n: int, labels: Sequence[str]) -> Tuple[List[str], callable, callable]:
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    x = lambda i: PAD_L + (pw * (i + 0.5) / max(n, 1))
    y = lambda v: PAD_T + ph * (1 - v / ymax)
    out = [f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           f'role="img" aria-label="{_esc(title)}">',
           f'<rect x="{PAD_L}" y="{PAD_T}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>']
    for k in range(6):
        v = ymax * k / 5
        out.append(f'<line x1="{PAD_L}" x2="{PAD_L + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{PAD_L - 6}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="11">{_num(v)}</text>')
    out.append(f'<text x="14" y="{PAD_T + ph / 2:.0f}" font-size="11" transform="rotate(-90 14 {PAD_T + ph / 2:.0f})" '
               f'text-anchor="middle">{_esc(unit)}</text>')
    step = max(1, math.ceil(n / 14))
    for i, lab in enumerate(labels):
        if i % step == 0 or i == n - 1:
            out.append(f'<text x="{x(i):.1f}" y="{PAD_T + ph + 14}" font-size="10" text-anchor="end" '
                       f'transform="rotate(-35 {x(i):.1f} {PAD_T + ph + 14})">{_esc(lab)}</text>')
    return out, x, y


def _legend(names: Sequence[str], colours: Sequence[str], dashed: Sequence[bool] = ()) -> List[str]:
    out = []
    for k, (name, c) in enumerate(zip(names, colours)):
        yy = PAD_T + 8 + 16 * k
        dash = ' stroke-dasharray="5,3"' if (k < len(dashed) and dashed[k]) else ""
        out.append(f'<line x1="{W - PAD_R + 10}" x2="{W - PAD_R + 30}" y1="{yy}" y2="{yy}" stroke="{c}" '
                   f'stroke-width="3"{dash}/>')
        out.append(f'<text x="{W - PAD_R + 35}" y="{yy + 4}" font-size="11">{_esc(name)}</text>')
    return out


def trend_svg(title: str, labels: Sequence[str], lines: Dict[str, List[Optional[float]]], refs: Dict[str, float],
              marks: Sequence[Tuple[int, str]], unit: str = "us") -> str:
    """Lines over runs (None = missing), horizontal reference lines, vertical change marks."""
    n = len(labels)
    vals = [v for vs in lines.values() for v in vs if v is not None] + list(refs.values())
    out, x, y = _frame(title, _nice_max(max(vals) * 1.05 if vals else 1.0), unit, n, labels)
    for i, text in marks:
        out.append(f'<line class="change" x1="{x(i):.1f}" x2="{x(i):.1f}" y1="{PAD_T}" y2="{H - PAD_B}" stroke="#d00" '
                   f'stroke-width="2" stroke-dasharray="4,3"><title>{_esc(text)}</title></line>')
        out.append(f'<text x="{x(i) + 3:.1f}" y="{PAD_T + 12}" font-size="11" fill="#d00">&#9650; change</text>')
    names, cols, dashed = [], [], []
    for k, (name, vs) in enumerate(lines.items()):
        c = COLOURS[k % len(COLOURS)]
        pts = [(x(i), y(v), v) for i, v in enumerate(vs) if v is not None]
        if len(pts) > 1:
            out.append(f'<polyline class="series" fill="none" stroke="{c}" stroke-width="2" points="'
                       + " ".join(f"{px:.1f},{py:.1f}" for px, py, _ in pts) + '"/>')
        for (px, py, v), i in zip(pts, [i for i, v in enumerate(vs) if v is not None]):
            out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{c}"><title>{_esc(name)} run {i}: '
                       f'{v:.4g} {_esc(unit)}</title></circle>')
        names.append(name), cols.append(c), dashed.append(False)
    for k, (name, v) in enumerate(refs.items()):
        c = "#555" if k == 0 else COLOURS[(k + 7) % len(COLOURS)]
        out.append(f'<line class="reference" x1="{PAD_L}" x2="{W - PAD_R}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="{c}" '
                   f'stroke-width="2" stroke-dasharray="5,3"><title>{_esc(name)}: {v:.4g} {_esc(unit)}</title></line>')
        names.append(name), cols.append(c), dashed.append(True)
    out += _legend(names, cols, dashed)
    out.append("</svg>")
    return "\n".join(out)


def stacked_svg(title: str, labels: Sequence[str], hops: Sequence[str], parts: List[Dict[str, float]],
                marks: Sequence[int] = (), unit: str = "us") -> str:
    """One stacked bar per run: each hop's share of the end-to-end time."""
    n = len(labels)
    totals = [sum(max(0.0, p.get(h, 0.0)) for h in hops) for p in parts]
    out, x, y = _frame(title, _nice_max(max(totals) * 1.05 if totals else 1.0), unit, n, labels)
    bw = max(2.0, 0.7 * (W - PAD_L - PAD_R) / max(n, 1))
    for i, p in enumerate(parts):
        base = 0.0
        for k, h in enumerate(hops):
            v = max(0.0, p.get(h, 0.0))
            if v <= 0:
                continue
            out.append(f'<rect class="bar" x="{x(i) - bw / 2:.1f}" y="{y(base + v):.1f}" width="{bw:.1f}" '
                       f'height="{y(base) - y(base + v):.1f}" fill="{COLOURS[k % len(COLOURS)]}">'
                       f'<title>run {i}: {_esc(h)} {v:.4g} {_esc(unit)}</title></rect>')
            base += v
        if i in marks:
            out.append(f'<text x="{x(i):.1f}" y="{y(base) - 4:.1f}" text-anchor="middle" fill="#d00" font-size="13">'
                       f'&#9660;</text>')
    out += _legend(list(hops), [COLOURS[k % len(COLOURS)] for k in range(len(hops))])
    out.append("</svg>")
    return "\n".join(out)


def _short(t: str) -> str:
    try:
        return datetime.fromisoformat(t).strftime("%m-%d %H:%M")
    except ValueError:
        return t[:16]


def build(history: History, penalty: float = 3.0, min_relative: float = 0.05) -> Tuple[str, int, List[regress.Change]]:
    """The page's HTML, how many plots it has, and the regressions in effect it lists."""
    keys = history.keys()
    if not keys:
        raise HistoryError(f"{history.path} holds no results yet: add some with `splitrack history add`")
    # the watched medians (what nightly alerts on) and the plotted tails; p90, max and jitter of a shared
    # machine move too much from night to night to mark
    watched = set(regress.WATCH) | {k.metric for k in keys if k.metric.startswith("pytest ") and k.metric.endswith(" median")}
    changes = regress.detect(history, tuple(watched) + TREND_METRICS, penalty=penalty, min_relative=min_relative)
    groups: Dict[Tuple[str, str, str], List[SeriesKey]] = defaultdict(list)
    for k in keys:
        groups[(k.rack, k.machine, k.plan_hash)].append(k)
    live = [c for c in regress.live_regressions(changes) if c.key.metric in watched]
    body: List[str] = []
    n_plots = 0
    if live:
        body.append('<div class="alert"><b>Regressions in effect</b><ul>'
                    + "".join(f"<li>{_esc(c.describe())}</li>" for c in live) + "</ul></div>")
    else:
        body.append('<div class="ok">No regression in effect.</div>')
    for (rack, machine, plan), ks in sorted(groups.items()):
        by_metric = {(k.metric, k.hop): k for k in ks}
        times = sorted({p.time for k in ks for p in history.series(k)})
        idx = {t: i for i, t in enumerate(times)}
        commits = {}
        for k in ks:
            for p in history.series(k):
                commits[p.time] = p.commit_id
        labels = [f"{_short(t)} {commits[t][:7]}" for t in times]
        body.append(f"<h2>rack {_esc(rack)} &middot; machine {_esc(machine)} &middot; plan {_esc(plan)}</h2>"
                    f"<p>{len(times)} run(s), {_esc(times[0])} to {_esc(times[-1])}</p>")

        def values(metric: str, hop: str) -> List[Optional[float]]:
            vs: List[Optional[float]] = [None] * len(times)
            k = by_metric.get((metric, hop))
            for p in history.series(k) if k else []:
                vs[idx[p.time]] = p.value
            return vs

        grp_changes = [c for c in changes if (c.key.rack, c.key.machine, c.key.plan_hash) == (rack, machine, plan)]
        trend = {m: values(m, "e2e") for m in TREND_METRICS if (m, "e2e") in by_metric}
        pytest_medians = sorted(m for m, h in by_metric if h == "e2e" and m.startswith("pytest ") and m.endswith(" median"))
        for m in pytest_medians:
            trend[m] = values(m, "e2e")
        if trend:
            refs = {}
            for (m, hop), k in sorted(by_metric.items()):
                if m == "cpu p50":
                    pts = history.series(k)
                    refs[f"CPU {hop} p50"] = pts[-1].value
            marks = [(idx[c.time], c.describe()) for c in grp_changes
                     if c.key.hop == "e2e" and c.key.metric in trend]
            body.append("<h3>End-to-end latency per run</h3>")
            body.append(trend_svg("end-to-end latency", labels, trend, refs, marks))
            n_plots += 1
        # bench's single/stream runs first, then imported pytest-benchmark tests ("pytest NAME breakdown p50")
        modes = ["single", "stream"] + sorted({m[: -len(" breakdown p50")] for m, _ in by_metric
                                               if m.startswith("pytest ") and m.endswith(" breakdown p50")})
        for mode in modes:
            bd_keys = [k for (m, h), k in by_metric.items() if m == f"{mode} breakdown p50"]
            if not bd_keys:
                continue
            hops = _flow_order([k.hop for k in bd_keys])
            parts = [dict() for _ in times]
            for k in bd_keys:
                for p in history.series(k):
                    parts[idx[p.time]][k.hop] = p.value
            hop_marks = sorted({idx[c.time] for c in grp_changes
                                if c.key.metric in (f"{mode} p50", f"{mode} breakdown p50") and c.key.hop != "e2e"})
            what = f"{mode} frames" if mode in ("single", "stream") else mode
            body.append(f"<h3>Where the time goes ({_esc(what)}, critical path, median per hop)</h3>")
            body.append(stacked_svg(f"{mode} per-hop breakdown", labels, hops, parts, hop_marks))
            n_plots += 1
        body.append(_latest_table(history, ks, times[-1]))
        if grp_changes:
            body.append("<h3>All change points</h3><table><tr><th>metric</th><th>hop</th><th>since run</th>"
                        "<th>commit</th><th>before</th><th>after</th><th>change</th><th></th></tr>"
                        + "".join(f'<tr class="{"bad" if c.regression else "good"}"><td>{_esc(c.key.metric)}</td>'
                                  f"<td>{_esc(c.key.hop)}</td><td>{c.index} ({_esc(c.time)})</td><td>{_esc(c.commit_id)}</td>"
                                  f"<td>{c.before:.4g}</td><td>{c.after:.4g} {_esc(c.unit)}</td><td>{c.relative:+.1%}</td>"
                                  f"<td>{'regression' if c.regression else 'improvement'}</td></tr>" for c in grp_changes)
                        + "</table>")
    page = PAGE.format(generated=_esc(datetime.now(timezone.utc).isoformat(timespec="seconds")),
                       db=_esc(history.path.name), body="\n".join(body), n_plots=n_plots, n_live=len(live))
    return page, n_plots, live


def _flow_order(hops: List[str]) -> List[str]:
    """Hops in the order frames meet them, rebuilt from their names ("link a->b", "board p")."""
    from harness.measure.attribution import Topology

    links = [tuple(h[len("link "):].split("->", 1)) for h in hops if h.startswith("link ") and "->" in h]
    parts = {p for link in links for p in link if p != "host"}
    walked = [h for h in Topology(links, {p: p for p in parts}).hops() if h in hops]
    return walked + sorted(set(hops) - set(walked))


def _latest_table(history: History, keys: List[SeriesKey], time: str) -> str:
    rows = history.rows("time = ? AND metric IN ('single p50','single p99','stream p50','stream p99','cpu p50',"
                        "'accuracy','stream throughput','single throughput')", (time,))
    keyset = {(k.rack, k.machine, k.plan_hash) for k in keys}
    rows = [r for r in rows if (r.rack, r.machine, r.plan_hash) in keyset]
    if not rows:
        return ""
    return ("<h3>Latest run</h3><table><tr><th>metric</th><th>hop</th><th>value</th></tr>"
            + "".join(f"<tr><td>{_esc(r.metric)}</td><td>{_esc(r.hop)}</td><td>{r.value:.4g} {_esc(r.unit)}</td></tr>"
                      for r in rows) + "</table>")


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>splitrack dashboard</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; max-width: 1100px; }}
.alert {{ background: #fde8e8; border: 2px solid #d00; padding: 8px 14px; }}
.ok {{ background: #e8f6e8; border: 2px solid #2a2; padding: 8px 14px; }}
table {{ border-collapse: collapse; font-size: 13px; margin: 8px 0 20px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
tr.bad td {{ background: #fde8e8; }} tr.good td {{ background: #eef8ee; }}
svg.plot {{ display: block; margin: 6px 0 18px; }}
</style></head>
<body>
<h1>splitrack: latency per hop, history and regressions</h1>
<p>From {db}, generated {generated}. Times in microseconds; bars show each hop's median share of the
end-to-end time along the critical path; dashed lines are the CPU reference; red marks are change points.</p>
{body}
<script>
// a sanity line for whoever opens the console (and for the headless test): how many plots drew
console.log("splitrack dashboard: " + document.querySelectorAll("svg.plot").length + " plots of {n_plots}, {n_live} regression(s)");
</script>
</body></html>
"""


def write(db: Path, out_dir: Path) -> Tuple[Path, List[regress.Change]]:
    """Write out_dir/index.html; returns it and the regressions in effect it lists."""
    if not Path(db).exists():
        raise HistoryError(f"{db} does not exist: add results with `splitrack history add` or run `splitrack nightly`")
    with History(db) as h:
        page, _, changes = build(h)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = out_dir / "index.html"
    index.write_text(page)
    return index, changes
