"""The dashboard: static HTML pages from the history, drawn with plotly, working offline.

    splitrack dashboard --db results.sqlite -o site/      # then open site/index.html

site/index.html     regressions in effect on top (one entry per hop and run), changes the machine explains;
                    per series (label, model, rack): end-to-end trend by run (hover: time, commit; click: the
                    run's page; buttons: normalised by a control), change points and events (new plan,
                    FIFO depths, splitrack, machine) marked, the controls per run (CPU reference, loopback
                    echo, board probes, host load), and each run's critical-path breakdown (means: they add up)
site/runs/N.html    one run: environment (host load, splitrack, tuning), controls, error of an incomplete run,
                    a critical-path waterfall per mode
                    whose parts add up to the mean end to end, accuracy beside the CPU's, links to the
                    previous run of its series and to the comparison with it (site/runs/N-vs-M.html)
site/plotly.min.js  plotly's own bundled copy, written once and referenced relatively: nothing is fetched

Hops are ordered by the position on the critical path that the history recorded, never by their names.
"""
from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from . import regress
from . import series as series_mod
from .history import History, HistoryError, RunInfo, run_controls

PLOTLY_JS = "plotly.min.js"
TREND = (("single p50", "solid"), ("single p99", "dot"), ("single min", "longdash"), ("stream p50", "dash"),
         ("run p50", "dashdot"))
CONTROL_STYLES = (("#444444", "dash"), ("#9467bd", "dot"), ("#8c564b", "dashdot"), ("#17becf", "longdash"),
                  ("#bcbd22", "solid"), ("#7f7f7f", "dot"))
NORMALISE_BY = ("loopback echo", "cpu keras batch 1", "python loop")  # the trend's buttons, when the runs have them
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


def _series_groups(runs: List[RunInfo]) -> Dict[Tuple[str, str, str], List[RunInfo]]:
    return series_mod.group(runs)


def _x(runs: List[RunInfo]) -> List[str]:
    """The categorical x axis of a series' plots: one place per run, labelled by its id."""
    return [str(r.run_id) for r in runs]


def _run_axis(fig, runs: List[RunInfo]) -> None:
    fig.update_xaxes(type="category", title="run (id; hover for its time and commit)", automargin=True,
                     tickangle=0, nticks=min(len(runs), 25))


def _marks(fig, runs: List[RunInfo], changes: List[regress.Change], events: List[series_mod.Event]) -> None:
    """Vertical lines at the runs where a regression starts (red), the machine changed (orange), or an event
    happened (grey: a new plan, FIFO depths, splitrack, machine)."""
    pos = {r.run_id: i for i, r in enumerate(runs)}
    by_run: Dict[int, List[regress.Change]] = {}
    for c in changes:
        by_run.setdefault(c.run_id, []).append(c)
    for run_id, cs in by_run.items():
        if run_id not in pos:
            continue
        real = [c for c in cs if not c.explained and c.regression]
        colour = "#d00" if real else "#e69500"
        hops = sorted({c.key.hop for c in (real or cs)})
        what = ("regression at " if real else "the machine changed: ") + ", ".join(hops[:3]) +             (f" (+{len(hops) - 3})" if len(hops) > 3 else "")
        fig.add_vline(x=pos[run_id] - 0.5, line=dict(color=colour, dash="dash"), annotation_text=f"run {run_id}: {what}",
                      annotation_font_color=colour, annotation_position="top right")
    for k, e in enumerate(events):
        if e.run_id in pos:
            fig.add_vline(x=pos[e.run_id] - 0.5, line=dict(color="#666", dash="dot"),
                          annotation_text=f"run {e.run_id}: {e.describe()}", annotation_font_color="#444",
                          annotation_position="bottom right", annotation_yshift=14 * k)


def _trend(h: History, key, runs: List[RunInfo], changes: List[regress.Change],
           events: Sequence[series_mod.Event] = ()):
    import plotly.graph_objects as go

    fig = go.Figure()
    x = _x(runs)
    custom = [[r.run_id, r.commit_id, r.time[:16].replace("T", " "), f"runs/{r.run_id}.html",
               "complete" if r.complete else "INCOMPLETE: " + r.error] for r in runs]
    vals = {r.run_id: h.values(r.run_id) for r in runs}
    # bench's figures, then the medians of imported pytest-benchmark tests
    pytest_medians = sorted({m for v in vals.values() for m, hop in v if hop == "e2e" and m.startswith("pytest ")
                             and m.endswith(" median")})
    ys = []
    for metric, dash in list(TREND) + [(m, "solid") for m in pytest_medians]:
        y = [vals[r.run_id].get((metric, "e2e")) for r in runs]
        if all(v is None for v in y):
            continue
        ys.append(y)
        fig.add_trace(go.Scatter(
            x=x, y=y, name=metric if metric.startswith("pytest ") else f"rack {metric}", mode="lines+markers",
            line=dict(dash=dash, width=2), customdata=custom,
            marker=dict(size=9, symbol=["circle" if r.complete else "x" for r in runs]),
            hovertemplate="run %{customdata[0]}, %{customdata[2]} UTC<br>commit %{customdata[1]}<br>" + metric
                          + " %{y:.1f}<br>%{customdata[4]}<extra></extra>"))
    _marks(fig, runs, changes, list(events))
    # buttons: the same figures divided by a control of the same run (x its median over the series), so that what
    # the machine shares drops out
    buttons = [dict(label="us", method="restyle", args=[{"y": ys}])]
    ctl = {r.run_id: run_controls(vals[r.run_id]) for r in runs}
    for name in NORMALISE_BY:
        c = [ctl[r.run_id].get(name) for r in runs]
        known = [v for v in c if v]
        if len(known) < 2:
            continue
        med = sorted(known)[len(known) // 2]
        norm = [[None if v is None or not cv else v / cv * med for v, cv in zip(y, c)] for y in ys]
        buttons.append(dict(label=f"normalised by {name}", method="restyle", args=[{"y": norm}]))
    if len(buttons) > 1:
        fig.update_layout(updatemenus=[dict(type="buttons", direction="right", x=0.0, y=1.0, xanchor="left",
                                            yanchor="bottom", pad=dict(b=4), showactive=True, buttons=buttons,
                                            font=dict(size=11))])
    fig.update_layout(title=dict(text=f"end-to-end latency per run ({_esc(key[0])})", x=0.01, y=0.98),
                      legend=dict(orientation="h", y=-0.22), hovermode="closest", margin=dict(t=100))
    # log scale: p50, p99 and the floor stay apart instead of overlapping
    fig.update_yaxes(title="latency (us, log scale)", type="log")
    _run_axis(fig, runs)
    return fig


def _controls_plot(h: History, runs: List[RunInfo]):
    """The machine per run: every control's p50 (CPU reference, loopback echo, CPU loop, board probes) on a log
    axis, and the CPUs other processes kept busy during the run (right axis); None without controls."""
    import plotly.graph_objects as go

    per = {r.run_id: run_controls(h.values(r.run_id)) for r in runs}
    names = sorted({n for v in per.values() for n in v}, key=lambda n: (not n.startswith("cpu "), n))
    load = [(h.values(r.run_id)).get(("host load", "other cpus")) for r in runs]
    if not names and all(v is None for v in load):
        return None
    x = _x(runs)
    fig = go.Figure()
    for k, name in enumerate(names):
        colour, dash = CONTROL_STYLES[k % len(CONTROL_STYLES)]
        fig.add_trace(go.Scatter(x=x, y=[per[r.run_id].get(name) for r in runs], name=name, mode="lines+markers",
                                 line=dict(color=colour, dash=dash, width=2), marker=dict(size=6),
                                 hovertemplate=f"run %{{x}}: {_esc(name)} p50 %{{y:.1f}} us<extra></extra>"))
    cpus = max([(r.env.get("host") or {}).get("cpus") or 1 for r in runs] + [max([v or 0 for v in load] + [1])])
    if any(v is not None for v in load):
        fig.add_trace(go.Bar(x=x, y=load, name="CPUs other processes kept busy (right axis)", yaxis="y2",
                             opacity=0.2, marker_color="#ff7f0e",
                             hovertemplate="run %{x}: other processes kept %{y:.2f} CPUs busy<extra></extra>"))
    # decades only on the log axis: minor labels (2, 3, 5 ...) of a control's few decades overlap
    fig.update_layout(title="the machine per run: controls measured beside the rack (p50)",
                      legend=dict(orientation="h", y=-0.22), hovermode="closest",
                      yaxis=dict(title="us per call (log scale)", type="log", dtick=1),
                      yaxis2=dict(title="CPUs busy (other processes)", overlaying="y", side="right", type="linear",
                                  range=[0, cpus * 1.05], dtick=0.5, showgrid=False))
    _run_axis(fig, runs)
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
    x = _x(runs)
    fig = go.Figure()
    for hop in order:
        fig.add_trace(go.Bar(x=x, y=[means[r.run_id].get(hop) for r in runs], name=hop_label(hop),
                             customdata=[[r.run_id, r.commit_id, r.time[:16].replace("T", " "), f"runs/{r.run_id}.html"]
                                         for r in runs],
                             hovertemplate="run %{customdata[0]}, %{customdata[2]} UTC, commit %{customdata[1]}<br>"
                                           + _esc(hop_label(hop)) + ": %{y:.1f} us<extra></extra>"))
    # the legend lists the stack top to bottom, as the eye reads the bars
    fig.update_layout(barmode="stack", title=f"where the time goes, {mode} frames: mean per hop along the critical "
                      "path (adds up to the mean end to end)", legend=dict(traceorder="reversed"))
    fig.update_yaxes(title="time on the critical path (us)")
    _run_axis(fig, runs)
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
    live = check.live_alarms
    if live:
        body.append('<div class="alert"><b>Regressions in effect</b> (one entry per hop and run)<ul>' + "".join(
            f'<li><a href="runs/{a.primary.run_id}.html">run {a.primary.run_id}</a>: '
            f"{_esc(a.describe(byid.get(a.primary.run_id)))}</li>" for a in live) + "</ul></div>")
    else:
        body.append('<div class="ok">No regression in effect.</div>')
    machine = regress.alarms([c for c in check.changes if c.latest and (c.explained or not c.confirmed)])
    if machine:
        body.append('<div class="note"><b>Changes that fail nothing</b> (the machine/host, not the plan; or seen in '
                    "the newest run only)<ul>" + "".join(
                        f'<li><a href="runs/{a.primary.run_id}.html">run {a.primary.run_id}</a>: '
                        f"{_esc(a.describe(byid.get(a.primary.run_id)))}</li>" for a in machine) + "</ul></div>")
    for label, model, rack, k in check.unjudged:
        body.append(f'<div class="note">Cannot judge {_esc(label)} (model {_esc(model or "?")}, rack {_esc(rack)}) yet: '
                    f"{_esc(regress.too_few_runs(k))}.</div>")
    for key, rs in _series_groups(runs).items():
        label, model, rack = key
        mine = [c for c in check.changes if c.key.series == key]
        evs = series_mod.events(rs)
        plans = list(dict.fromkeys(r.plan_hash for r in rs))
        machines = list(dict.fromkeys(r.machine for r in rs))
        body.append(f"<h2>{_esc(label)}</h2><p class='sub'>model {_esc(model or '?')} &middot; rack {_esc(rack)} "
                    f"&middot; plan {_esc(' -> '.join(plans))} &middot; machine {_esc(', '.join(machines))} &middot; "
                    f"{len(rs)} run(s); click a point to open its run</p>")
        if evs:
            body.append("<p class='sub'>events on this series: " + "; ".join(
                f"run {e.run_id}: {_esc(e.describe())}" for e in evs) + "</p>")
        body.append(_fig_html(_trend(h, key, rs, mine, evs), f"trend-{n}"))
        n += 1
        fig = _controls_plot(h, rs)
        if fig is not None:
            body.append(_fig_html(fig, f"controls-{n}"))
            n += 1
        for mode in ("single", "stream"):
            fig = _breakdown(h, key, rs, mode)
            if fig is not None:
                body.append(_fig_html(fig, f"breakdown-{n}"))
                n += 1
        body.append("<table><tr><th>run</th><th>time</th><th>commit</th><th>plan</th><th>state</th>"
                    "<th>single p50 (us)</th><th>single min (us)</th><th>accuracy</th></tr>" + "".join(
                        f'<tr class="{"" if r.complete else "bad"}"><td><a href="runs/{r.run_id}.html">{r.run_id}</a></td>'
                        f"<td>{_esc(r.time[:19])}</td><td>{_esc(r.commit_id)}</td><td>{_esc(r.plan_hash)}</td>"
                        f"<td>{'complete' if r.complete else 'INCOMPLETE: ' + _esc(r.error)}</td>"
                        f"<td>{_fmt(h.values(r.run_id).get(('single p50', 'e2e')))}</td>"
                        f"<td>{_fmt(h.values(r.run_id).get(('single min', 'e2e')))}</td>"
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
           ("machine", run.machine), ("commit (yours)", run.commit_id), ("splitrack", run.splitrack or "not recorded"),
           ("time (UTC)", run.time), ("source", run.source)]
    tuning = run.env.get("tuning") or {}
    if tuning:
        env.append(("FIFO depths (tuning.json)", ", ".join(f"{k}: {v}" for k, v in tuning.get("fifo_depths", {}).items())
                    + f" (tuning {tuning.get('hash')})"))
    host = run.env.get("host") or {}
    if host:
        env.append(("host load", f"{host.get('cpus')} CPUs, load average {host.get('load_avg')}; during the run "
                                  f"{_fmt(host.get('busy_cpus'), '.2f')} CPUs busy, this process "
                                  f"{_fmt(host.get('own_cpus'), '.2f')}, other processes {_fmt(host.get('other_cpus'), '.2f')}"))
    data = run.env.get("data") or {}
    if data:
        env.append(("accuracy data", f"{data.get('source')} ({data.get('labelled') or 'no'} labels)"
                    + (f": {data['note']}" if data.get("note") else "")))
    for b, info in sorted((run.env.get("boards") or {}).items()):
        env.append((f"board {b}", ", ".join(f"{k} {v}" for k, v in info.items() if v is not None)))
    wide = run.env.get("links_not_judged") or {}
    if wide:  # measured, but their ends' clocks were known to milliseconds only: no trend is judged on them
        env.append(("links not judged", "; ".join(f"{k} ({v})" for k, v in sorted(wide.items()))))
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
        n = data.get("labelled")
        on = (f"<p>Of {n} labelled frames ({_esc(data.get('source'))}): one answer moves it by {1 / n:.2g}.</p>"
              if isinstance(n, int) and n > 0 else "")
        tables.append(f"<div><h2>Accuracy</h2>{on}<table><tr><th>who</th><th>accuracy</th></tr>" + "".join(
            f"<tr><td>{_esc(k)}</td><td>{v:.4f}</td></tr>" for k, v in acc) + "</table></div>")
    lat = [(f"rack {m}", vals.get((f"{m} p50", "e2e")), vals.get((f"{m} p99", "e2e"))) for m in ("single", "stream", "run")]
    lat += [(f"CPU {hop}", v, vals.get(("cpu p99", hop))) for (m, hop), v in sorted(vals.items()) if m == "cpu p50"]
    ctl = [(hop, v, vals.get(("control p99", hop))) for (m, hop), v in sorted(vals.items()) if m == "control p50"]
    if ctl:
        tables.append("<div><h2>Controls (the machine)</h2><table><tr><th></th><th>p50 (us)</th><th>p99 (us)</th></tr>"
                      + "".join(f"<tr><td>{_esc(k)}</td><td>{_fmt(a)}</td><td>{_fmt(b)}</td></tr>" for k, a, b in ctl)
                      + "</table></div>")
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
        top = max([sum(parts.values())] + [0.0]) * 1.18  # room above the bars for their labels
        fig.update_yaxes(title="us", range=[0, top or 1])
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
            f"<th></th></tr>{rows}</table>"
            + ("<h2>Controls (the machine)</h2><table><tr><th>control</th><th>p50 A (us)</th><th>p50 B (us)</th>"
               "<th>change</th></tr>" + "".join(
                   f'<tr class="{"bad" if (n, x, y) in c.machine_moved else ""}"><td>{_esc(n)}</td><td>{x:.1f}</td>'
                   f"<td>{y:.1f}</td><td>{(y / x - 1) if x else float('nan'):+.1%}</td></tr>" for n, x, y in c.controls)
               + "</table>" if c.controls else "")
            + (f"<div class='note'>The machine was not the same in both runs: " + _esc(", ".join(
                f"{n} {y / x - 1:+.0%}" for n, x, y in c.machine_moved)) + ". A change the controls share is the "
               "machine's, not the plan's.</div>" if c.machine_moved else "")
            + f"<p>Significant: adjusted p &lt; {c.alpha:g} and a p50 change of at least "
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
.plotly-graph-div {{ margin-bottom: 28px; }}
footer {{ clear: both; margin-top: 24px; padding-top: 8px; border-top: 1px solid #ddd; color: #555; }}
.row {{ display: flex; flex-wrap: wrap; gap: 32px; align-items: flex-start; }}
table {{ border-collapse: collapse; font-size: 13px; margin: 8px 0 20px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
tr.bad td {{ background: #fde8e8; }} tr.good td {{ background: #eef8ee; }}
</style></head>
<body>
{body}
<footer>generated {generated}</footer>
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

