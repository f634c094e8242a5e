"""The dashboard: static HTML pages from the history, drawn with plotly, working offline.

    splitrack dashboard --db results.sqlite -o site/      # then open site/index.html

site/index.html     regressions in effect on top; per series (label, rack, machine, plan): end-to-end trend
                    (hover: run, commit, label; click: the run's page) with the CPU reference and change
                    points marked, and each run's critical-path breakdown (means: they add up)
site/runs/N.html    one run: environment, error of an incomplete run, a critical-path waterfall per mode
                    whose parts add up to the mean end to end, accuracy beside the CPU's, links to the
                    previous run of its series and to the comparison with it (site/runs/N-vs-M.html)
site/plotly.min.js  plotly's own bundled copy, written once and referenced relatively: nothing is fetched

Hops are ordered by the position on the critical path that the history recorded, never by their names.
"""
from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from . import regress
from .history import History, HistoryError, RunInfo

PLOTLY_JS = "plotly.min.js"
TREND = (("single p50", "solid"), ("single p99", "dot"), ("stream p50", "dash"), ("run p50", "dashdot"))
CPU_STYLES = (("#444444", "dash"), ("#9467bd", "dot"), ("#8c564b", "dashdot"), ("#17becf", "longdash"))
CONFIG = {"responsive": True, "displaylogo": False}


def _esc(s: object) -> str:
    return html.escape(str(s), quote=True)


def hop_label(hop: str) -> str:
    """What a hop's time holds: the first link's time starts when the host decides to send, so it includes
    the frame's wait on the host (in a stream, behind frames in flight)."""
    return f"host queue + {hop}" if hop.startswith("link host->") else hop


def _fig_html(fig, div_id: str) -> str:
    fig.update_layout(autosize=True, margin=dict(l=70, r=30, t=50, b=80), template="plotly_white",
                      font=dict(family="sans-serif"))
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=CONFIG,
                       default_width="100%", default_height="440px")


def _critical_means(h: History, run: RunInfo, mode: str) -> Tuple[Dict[str, float], Optional[float]]:
    """Mean critical-path time per hop (in critical-path order) and mean end to end, from the samples."""
    vals = h.values(run.run_id)
    parts = {hop: vals[(f"{mode} breakdown mean", hop)] for hop in run.hops.get(mode, [])
             if (f"{mode} breakdown mean", hop) in vals}
    s = h.samples(run.run_id).get((mode, "e2e", "e2e"))
    return parts, (float(s.mean()) if s is not None and len(s) else None)


def _series_groups(runs: List[RunInfo]) -> Dict[Tuple[str, str, str, str], List[RunInfo]]:
    groups: Dict[Tuple[str, str, str, str], List[RunInfo]] = {}
    for r in runs:
        groups.setdefault((r.label, r.rack, r.machine, r.plan_hash), []).append(r)
    return groups


def _trend(h: History, key, runs: List[RunInfo], changes: List[regress.Change]):
    import plotly.graph_objects as go

    fig = go.Figure()
    x = [datetime.fromisoformat(r.time) for r in runs]
    custom = [[r.run_id, r.commit_id, r.label, f"runs/{r.run_id}.html",
               "complete" if r.complete else "INCOMPLETE: " + r.error] for r in runs]
    vals = {r.run_id: h.values(r.run_id) for r in runs}
    # bench's figures, then the medians of imported pytest-benchmark tests
    pytest_medians = sorted({m for v in vals.values() for m, hop in v if hop == "e2e" and m.startswith("pytest ")
                             and m.endswith(" median")})
    for metric, dash in list(TREND) + [(m, "solid") for m in pytest_medians]:
        y = [vals[r.run_id].get((metric, "e2e")) for r in runs]
        if all(v is None for v in y):
            continue
        fig.add_trace(go.Scatter(
            x=x, y=y, name=metric if metric.startswith("pytest ") else f"rack {metric}", mode="lines+markers", line=dict(dash=dash, width=2), customdata=custom,
            marker=dict(size=9, symbol=["circle" if r.complete else "x" for r in runs]),
            hovertemplate="run %{customdata[0]} (%{customdata[2]})<br>commit %{customdata[1]}<br>%{x|%Y-%m-%d %H:%M}"
                          "<br>" + metric + " %{y:.1f} us<br>%{customdata[4]}<extra></extra>"))
    latest = vals[runs[-1].run_id]
    cpu = sorted((hop, v) for (m, hop), v in latest.items() if m == "cpu p50")
    for k, (name, v) in enumerate(cpu):
        colour, dash = CPU_STYLES[k % len(CPU_STYLES)]
        fig.add_trace(go.Scatter(x=[x[0], x[-1]] if len(x) > 1 else [x[0], x[0]], y=[v, v], mode="lines",
                                 name=f"CPU {name} p50 ({v:.0f} us)", line=dict(color=colour, dash=dash, width=2),
                                 hovertemplate=f"CPU {name} p50: {v:.1f} us (latest run)<extra></extra>"))
    marks: Dict[int, List[regress.Change]] = {}
    for c in changes:  # one mark per run where something changed (the hops are listed on the page)
        marks.setdefault(c.run_id, []).append(c)
    for run_id, cs in marks.items():
        e2e = [c for c in cs if c.key.hop == "e2e" and c.key.metric in dict(TREND)]
        what = ", ".join(f"{c.key.metric} {c.relative:+.0%}" for c in e2e) or f"{len(cs)} hop figure(s)"
        fig.add_vline(x=datetime.fromisoformat(cs[0].time).timestamp() * 1000, line=dict(color="#d00", dash="dash"),
                      annotation_text=f"change at run {run_id}: {what}", annotation_font_color="#d00",
                      annotation_position="top left")
    fig.update_layout(title=f"end-to-end latency per run ({key[0]})", legend=dict(orientation="h", y=-0.25),
                      hovermode="closest")
    # log scale: the CPU references (tens to thousands of us) stay apart instead of overlapping near zero
    fig.update_yaxes(title="latency (us, log scale)", type="log")
    fig.update_xaxes(title="run time (UTC)", tickformat="%Y-%m-%d<br>%H:%M", automargin=True)
    return fig


def _breakdown(h: History, key, runs: List[RunInfo], mode: str):
    import plotly.graph_objects as go

    order: List[str] = []  # hops in the recorded critical-path order, the newest run's first
    for r in reversed(runs):
        for hop in r.hops.get(mode, []):
            if hop not in order:
                order.append(hop)
    if not order:
        return None
    means = {r.run_id: _critical_means(h, r, mode)[0] for r in runs}
    x = [datetime.fromisoformat(r.time) for r in runs]
    fig = go.Figure()
    for hop in order:
        fig.add_trace(go.Bar(x=x, y=[means[r.run_id].get(hop) for r in runs], name=hop_label(hop),
                             customdata=[[r.run_id, r.commit_id, r.label, f"runs/{r.run_id}.html"] for r in runs],
                             hovertemplate="run %{customdata[0]} (%{customdata[2]}), commit %{customdata[1]}<br>"
                                           + _esc(hop_label(hop)) + ": %{y:.1f} us<extra></extra>"))
    # the legend lists the stack top to bottom, as the eye reads the bars
    fig.update_layout(barmode="stack", title=f"where the time goes, {mode} frames: mean per hop along the critical "
                      "path (adds up to the mean end to end)", legend=dict(traceorder="reversed"))
    fig.update_yaxes(title="time on the critical path (us)")
    fig.update_xaxes(title="run time (UTC)", tickformat="%Y-%m-%d<br>%H:%M", automargin=True)
    return fig


def _page(title: str, body: str, js: str, n_plots: int) -> str:
    return PAGE.format(title=_esc(title), body=body, js=js, n_plots=n_plots,
                       generated=_esc(datetime.now(timezone.utc).isoformat(timespec="seconds")))


def build_index(h: History, runs: List[RunInfo], check: regress.Check) -> Tuple[str, int]:
    """The dashboard's index.html and its number of plots: regressions in effect, then per series its
    trend, per-hop breakdowns and a table of runs (single p50 in us, accuracy)."""
    body: List[str] = []
    n = 0
    byid = {r.run_id: r for r in runs}
    if check.live:
        body.append('<div class="alert"><b>Regressions in effect</b><ul>' + "".join(
            f'<li><a href="runs/{c.run_id}.html">run {c.run_id}</a>: {_esc(c.describe(byid.get(c.run_id)))}</li>'
            for c in check.live) + "</ul></div>")
    else:
        body.append('<div class="ok">No regression in effect.</div>')
    for label, rack, machine, plan, k in check.unjudged:
        body.append(f'<div class="note">Cannot judge {_esc(label)} (rack {_esc(rack)}, plan {_esc(plan)}) yet: needs at '
                    f"least {regress.MIN_BEFORE} earlier runs of this series, has {max(k - 1, 0)}.</div>")
    for key, rs in _series_groups(runs).items():
        label, rack, machine, plan = key
        mine = [c for c in check.changes if (c.key.label, c.key.rack, c.key.machine, c.key.plan_hash) == key]
        body.append(f"<h2>{_esc(label)}</h2><p class='sub'>model {_esc(rs[-1].model or '?')} &middot; plan "
                    f"{_esc(plan)} &middot; rack {_esc(rack)} &middot; machine {_esc(machine)} &middot; {len(rs)} run(s)"
                    "; click a point to open its run</p>")
        body.append(_fig_html(_trend(h, key, rs, mine), f"trend-{n}"))
        n += 1
        for mode in ("single", "stream"):
            fig = _breakdown(h, key, rs, mode)
            if fig is not None:
                body.append(_fig_html(fig, f"breakdown-{n}"))
                n += 1
        body.append("<table><tr><th>run</th><th>time</th><th>commit</th><th>state</th><th>single p50 (us)</th>"
                    "<th>accuracy</th></tr>" + "".join(
                        f'<tr class="{"" if r.complete else "bad"}"><td><a href="runs/{r.run_id}.html">{r.run_id}</a></td>'
                        f"<td>{_esc(r.time[:19])}</td><td>{_esc(r.commit_id)}</td>"
                        f"<td>{'complete' if r.complete else 'INCOMPLETE: ' + _esc(r.error)}</td>"
                        f"<td>{_fmt(h.values(r.run_id).get(('single p50', 'e2e')))}</td>"
                        f"<td>{_fmt(h.values(r.run_id).get(('accuracy', 'rack')), '.4f')}</td></tr>" for r in reversed(rs))
                    + "</table>")
    return _page("splitrack dashboard", "<h1>splitrack: latency per hop, history and regressions</h1>" +
                 "\n".join(body), "", n), n


def _fmt(v, spec: str = ".1f") -> str:
    return "" if v is None else format(v, spec)


def build_run(h: History, run: RunInfo, prev: Optional[RunInfo]) -> Tuple[str, int]:
    """A run's page and its number of plots: environment, accuracy, p50/p99 latency (us) beside the CPU, and
    a waterfall of the mean critical path per hop (us) for each mode; links to the previous run `prev`."""
    import plotly.graph_objects as go

    vals = h.values(run.run_id)
    body = [f"<p><a href='../index.html'>&larr; dashboard</a>"
            + (f" &middot; <a href='{prev.run_id}.html'>previous run ({prev.run_id})</a> &middot; "
               f"<a href='{run.run_id}-vs-{prev.run_id}.html'>comparison with run {prev.run_id}</a>" if prev else
               " &middot; first run of its series") + "</p>",
            f"<h1>Run {run.run_id}: {_esc(run.label)}</h1>"]
    if not run.complete:
        body.append(f'<div class="alert"><b>Incomplete run</b>: {_esc(run.error)}. Its figures are of the frames that '
                    "came back.</div>")
    env = [("label", run.label), ("model", run.model or "?"), ("plan", run.plan_hash), ("rack", run.rack),
           ("machine", run.machine), ("commit", run.commit_id), ("time (UTC)", run.time), ("source", run.source)]
    data = run.env.get("data") or {}
    if data:
        env.append(("accuracy data", f"{data.get('source')} ({data.get('labelled') or 'no'} labels)"
                    + (f": {data['note']}" if data.get("note") else "")))
    for b, info in sorted((run.env.get("boards") or {}).items()):
        env.append((f"board {b}", ", ".join(f"{k} {v}" for k, v in info.items() if v is not None)))
    tables = ["<div><h2>Environment</h2><table>" + "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>"
                                                          for k, v in env) + "</table></div>"]
    compute = run.env.get("compute") or {}
    if compute:  # what each "board P" figure is: a virtual board's CPU, or the FPGA (runs before this: unknown)
        from harness.measure.compute_source import fpga_text

        tables.append("<div><h2>What a board's compute is</h2><table><tr><th>partition</th><th>board computes on"
                      "</th><th>FPGA compute (RTL cosimulation)</th></tr>" + "".join(
                          f"<tr><td>{_esc(p)}</td><td>{_esc(c.get('what') or c.get('label') or '?')}</td>"
                          f"<td>{_esc(fpga_text(c))}</td></tr>" for p, c in compute.items()) + "</table></div>")
    acc = sorted((hop, v) for (m, hop), v in vals.items() if m == "accuracy")
    if acc:
        tables.append("<div><h2>Accuracy</h2><table><tr><th>who</th><th>accuracy</th></tr>" + "".join(
            f"<tr><td>{_esc(k)}</td><td>{v:.4f}</td></tr>" for k, v in acc) + "</table></div>")
    lat = [(f"rack {m}", vals.get((f"{m} p50", "e2e")), vals.get((f"{m} p99", "e2e"))) for m in ("single", "stream", "run")]
    lat += [(f"CPU {hop}", v, vals.get(("cpu p99", hop))) for (m, hop), v in sorted(vals.items()) if m == "cpu p50"]
    tables.append("<div><h2>Latency beside the CPU</h2><table><tr><th></th><th>p50 (us)</th><th>p99 (us)</th></tr>"
                  + "".join(f"<tr><td>{_esc(k)}</td><td>{_fmt(a)}</td><td>{_fmt(b)}</td></tr>" for k, a, b in lat
                            if a is not None) + "</table></div>")
    body.append('<div class="row">' + "".join(tables) + "</div>")
    n = 0
    for mode in ("single", "stream"):
        parts, e2e = _critical_means(h, run, mode)
        if not parts:
            continue
        names = [hop_label(p) for p in parts] + ["end to end"]
        fig = go.Figure(go.Waterfall(x=names, y=list(parts.values()) + [0], measure=["relative"] * len(parts) + ["total"],
                                     text=[f"{v:.0f}" for v in parts.values()] + [f"{sum(parts.values()):.0f}"],
                                     textposition="outside", connector=dict(line=dict(color="#999")),
                                     hovertemplate="%{x}: %{y:.1f} us<extra></extra>"))
        title = f"{mode} frames: critical path, mean per hop (us); sum {sum(parts.values()):.1f} us"
        if e2e is not None:
            title += f", mean end to end measured {e2e:.1f} us"
        fig.update_layout(title=title, showlegend=False)
        fig.update_yaxes(title="us")
        body.append(_fig_html(fig, f"waterfall-{mode}"))
        n += 1
    return _page(f"run {run.run_id}: {run.label}", "\n".join(body), "", n), n


def build_comparison(h: History, a: RunInfo, b: RunInfo) -> str:
    """The HTML page comparing run `b` with run `a` (compare.compare with its default threshold and alpha):
    p50, p99 (us), change, adjusted Mann-Whitney p per hop."""
    from .compare import compare

    c = compare(h, a, b)
    rows = "".join(
        f'<tr class="{"bad" if x.regression else ("good" if x.significant else "")}"><td>{_esc(x.mode)}</td>'
        f"<td>{_esc(hop_label(x.hop))}</td><td>{x.p50_a:.1f}</td><td>{x.p50_b:.1f}</td><td>{x.change:+.1%}</td>"
        f"<td>{x.p99_a:.1f}</td><td>{x.p99_b:.1f}</td><td>{'no samples' if x.p_value is None else f'{x.p_value:.2g}'}"
        f"</td><td>{'SLOWER' if x.regression else ('faster' if x.significant else '')}</td></tr>" for x in c.hops)
    body = (f"<p><a href='../index.html'>&larr; dashboard</a> &middot; <a href='{b.run_id}.html'>run {b.run_id}</a>"
            f" &middot; <a href='{a.run_id}.html'>run {a.run_id}</a></p><h1>Run {b.run_id} against run {a.run_id}</h1>"
            f"<p>A: {_esc(a.describe())}<br>B: {_esc(b.describe())}</p><table><tr><th>mode</th><th>hop</th>"
            "<th>p50 A</th><th>p50 B</th><th>change</th><th>p99 A</th><th>p99 B</th><th>p (Mann-Whitney, adj.)</th>"
            f"<th></th></tr>{rows}</table><p>Significant: adjusted p &lt; {c.alpha:g} and a p50 change of at least "
            f"{c.threshold:.0%}. Same as <code>splitrack history compare {a.run_id} {b.run_id}</code>.</p>")
    return _page(f"run {b.run_id} vs {a.run_id}", body, "", 0)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{title}</title>
<script src="{{root}}plotly.min.js"></script>
<style>
body {{ font-family: sans-serif; margin: 16px 24px; color: #222; }}
.alert {{ background: #fde8e8; border: 2px solid #d00; padding: 8px 14px; margin: 8px 0; }}
.ok {{ background: #e8f6e8; border: 2px solid #2a2; padding: 8px 14px; }}
.note {{ background: #fff6dd; border: 1px solid #c90; padding: 6px 14px; margin: 6px 0; }}
.sub {{ color: #555; margin-top: -8px; }}
.row {{ display: flex; flex-wrap: wrap; gap: 32px; align-items: flex-start; }}
table {{ border-collapse: collapse; font-size: 13px; margin: 8px 0 20px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
tr.bad td {{ background: #fde8e8; }} tr.good td {{ background: #eef8ee; }}
</style></head>
<body>
{body}
<p class="sub">generated {generated}</p>
<script>
// a point of a trend opens its run's page (customdata[3] is its address)
document.querySelectorAll(".js-plotly-plot").forEach(function (gd) {{
  gd.on("plotly_click", function (ev) {{
    var p = ev.points[0];
    if (p && p.customdata && p.customdata[3]) {{ window.location.href = p.customdata[3]; }}
  }});
}});
// a sanity line for the console (and the headless test): how many plots drew
console.log("splitrack dashboard: " + document.querySelectorAll(".js-plotly-plot .svg-container").length + " plots of {n_plots}");
{js}
</script>
</body></html>
"""


def write(db: Path, out_dir: Path) -> Tuple[Path, List[regress.Change]]:
    """Write the site into out_dir; returns index.html and the regressions in effect it lists."""
    import plotly.offline

    with History(db, create=False) as h:
        runs = h.run_infos()
        if not runs:
            raise HistoryError(f"{db} holds no results yet: add some with `splitrack history add`")
        check = regress.check(h)
        out_dir = Path(out_dir)
        (out_dir / "runs").mkdir(parents=True, exist_ok=True)
        js = plotly.offline.get_plotlyjs()
        target = out_dir / PLOTLY_JS
        if not target.is_file() or target.read_text() != js:
            target.write_text(js)
        page, _ = build_index(h, runs, check)
        index = out_dir / "index.html"
        index.write_text(page.replace("{root}", ""))
        for key, rs in _series_groups(runs).items():
            for i, r in enumerate(rs):
                prev = rs[i - 1] if i else None
                page, _ = build_run(h, r, prev)
                (out_dir / "runs" / f"{r.run_id}.html").write_text(page.replace("{root}", "../"))
                if prev is not None:
                    try:
                        cmp_page = build_comparison(h, prev, r)
                    except HistoryError as e:  # runs of one series that share no hop: say so on the page
                        cmp_page = _page("comparison", f"<p>{_esc(e)}</p>", "", 0)
                    (out_dir / "runs" / f"{r.run_id}-vs-{prev.run_id}.html").write_text(cmp_page.replace("{root}", "../"))
    return index, check.live

