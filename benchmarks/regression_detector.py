"""How often the nightly regression check raises a false alarm, and how soon it sees a slower board: measured.

    .venv/bin/python benchmarks/regression_detector.py [--runs 24] [--frames 60] [--out benchmarks/out]
    .venv/bin/python benchmarks/regression_detector.py --replay benchmarks/out/regression_detector   # judge again

1. Collect. A virtual rack of 3 boards, each agent with a timing model (the plan's partitions take
   CYCLES cycles at 100 MHz, as an FPGA would: `rack up --timing estimate`), runs `splitrack bench` (short runs:
   --frames single frames and a stream, the CPU reference and the controls) at N run positions. Between
   positions the machine's load changes: idle, one or two CPU burners (the busy loop of scripts/cpu-burners.sh),
   in a fixed pseudo-random pattern of blocks, so that the load steps up and down as on a shared machine (the
   machine is shared with other users as well: their load comes on top, unplanned). At every position the
   unchanged plan runs ("A"), and from position K0 on also the same plan with board s1 slowed by +10 %, +25 %
   and +100 % (its agent's timing model takes that much longer, as a slower bitstream would; the same
   injection as sim_tests/results/test_nightly.py), in a rotating order under the same load. Each variant has
   a rack of its own, started on the idle machine before the first run and never restarted (an agent measures
   its sleeps' latency when it starts: restarting one under load would change it).
2. Judge, as the nightly does after every run (harness.results.regress.check on a history built run by run):
   - A/A: the N runs of A. A false alarm is a night with a regression in effect.
   - A/B: for every size and every change position k in KS, the series A[0:k] + slowed[k:N]. Detected when a
     regression at board s1's hop (or end to end) is in effect; delay = runs after k until then (0: at the
     first slower run). Any other regression in effect is a wrong alarm.
Prints the table and writes regression_detector.json in --out (the raw bench JSON of every run under
--out/regression_detector/ so that --replay judges the same runs again, e.g. after tuning the detector).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CYCLES = 20000  # each partition's modelled FPGA time: 200 us at 100 MHz
SLOW_PART = "s1"
SIZES = (0.10, 0.25, 1.00)
LEVELS = (0, 1, 2)  # CPU burners beside the run


def load_pattern(n: int, seed: int = 23) -> List[int]:
    """Burners per run position: blocks of 1-4 runs at a level drawn from LEVELS, never the same level twice
    in a row (so the load steps at every block boundary)."""
    rng = np.random.default_rng(seed)
    out: List[int] = []
    level = 0
    while len(out) < n:
        out += [level] * int(rng.integers(1, 5))
        level = int(rng.choice([x for x in LEVELS if x != level]))
    return out[:n]


class Burners:
    """`n` busy loops (bash `while :; do :; done`, as scripts/cpu-burners.sh), stopped by stop() or on exit."""

    def __init__(self):
        self.procs: List[subprocess.Popen] = []

    def set(self, n: int) -> None:
        while len(self.procs) > n:
            p = self.procs.pop()
            p.kill()
            p.wait()
        while len(self.procs) < n:
            self.procs.append(subprocess.Popen(["bash", "-c", "while :; do :; done"]))

    def stop(self) -> None:
        self.set(0)


def make_plan(folder: Path):
    """The digits FC network cut after fc1 and fc2 (three partitions), each with a cycle estimate of CYCLES."""
    from splitting.plan import Plan
    from splitting.reference_models import reference_model
    from splitting.split import split_model, write_plan

    if (folder / "plan.json").is_file():
        return Plan.load(folder)
    plan, models = split_model(reference_model("fc"), at=("fc1", "fc2"))
    for p in plan.partitions.values():
        p.estimate = {"cycles": CYCLES, "source": "benchmarks/regression_detector.py (a fixed FPGA time per board)"}
    write_plan(plan, models, folder)
    return Plan.load(folder)


def collect(out: Path, runs: int, frames: int, k0: int, progress=print) -> None:
    """Run the benches (see the module's docstring) and write each one's JSON under `out`."""
    from harness.jobs.bench import bench
    from harness.rack import deploy as deploy_mod
    from harness.rack.rackfile import load_rack
    from harness.rack.virtual_rack import rack_down, rack_up

    out.mkdir(parents=True, exist_ok=True)
    pattern = load_pattern(runs)
    meta = {"burners": pattern, "k0": k0, "sizes": SIZES, "cycles": CYCLES, "frames": frames, "slowed": SLOW_PART,
            "loadavg_before": list(os.getloadavg())}  # the other users' load: the 1, 5, 15-min load averages
    (out / "pattern.json").write_text(json.dumps(meta) + "\n")
    progress(f"load average before: {meta['loadavg_before']}")
    variants_all = ["A"] + [f"{s:+.0%}" for s in SIZES]
    factor = {v: 1.0 if v == "A" else 1.0 + float(v.rstrip("%")) / 100 for v in variants_all}
    slow_ports: Dict[int, float] = {}  # SSH port of each rack's board that carries SLOW_PART -> its factor
    real_timing = deploy_mod._timing

    def timing(plan, name, board):  # the slowed board's agent takes `factor` times the modelled time
        t = real_timing(plan, name, board)
        return dict(t, cycles=t["cycles"] * slow_ports.get(board.port, 1.0)) if t and name == SLOW_PART else t

    deploy_mod._timing = timing
    burners = Burners()
    racks: Dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="regdet-") as tmp:
        tmp = Path(tmp)
        plan = make_plan(tmp / "plan")
        try:
            # one rack per variant, all started (and their agents' timing models calibrated) on the idle machine
            # before the first run, and never restarted: a variant is a rack whose board s1 is slower
            loaded = {}
            for v in variants_all:
                racks[v] = tmp / f"rack-{len(racks)}.toml"
                rack_up(3, racks[v], state=tmp / f"state-{len(racks)}", name="regdet", timing="estimate",
                        progress=lambda s: None)
                loaded[v] = load_rack(racks[v])
                slow_ports[loaded[v].boards[1].port] = factor[v]
                bench(plan, loaded[v], frames=10, cpu=False, progress=lambda s: None)  # deploy, warm up
            t0 = time.monotonic()
            for i, level in enumerate(pattern):
                variants = ["A"] + (variants_all[1:] if i >= k0 else [])
                variants = variants[i % len(variants):] + variants[:i % len(variants)]  # rotate: no order bias
                burners.set(level)
                time.sleep(1.0)  # let the load settle
                for v in variants:
                    f = out / f"{v}-{i:02d}.json"
                    if f.is_file():
                        continue  # a collection cut short goes on where it stopped
                    doc = bench(plan, loaded[v], frames=frames, progress=lambda s: None, label="regdet")
                    doc["benchmark"] = {"variant": v, "position": i, "burners": level, "factor": factor[v]}
                    f.write_text(json.dumps(doc, default=_json_default) + "\n")
                    e2e = doc["reports"]["single"]["stats"]["e2e"]["p50"]
                    s1 = doc["reports"]["single"]["stats"]["board s1"]["p50"]
                    progress(f"[{i + 1}/{runs}] burners {level} {v:>5s}: single e2e p50 {e2e:7.1f} us, board s1 "
                             f"{s1:6.1f} us, loopback {doc['controls']['loopback echo']['p50']:5.1f} us, keras "
                             f"{doc['cpu']['keras batch 1']['p50']:6.1f} us ({time.monotonic() - t0:.0f} s)")
        finally:
            burners.stop()
            meta["loadavg_after"] = list(os.getloadavg())
            (out / "pattern.json").write_text(json.dumps(meta) + "\n")
            progress(f"load average after: {meta['loadavg_after']}")
            for f in racks.values():
                rack_down(f)
            deploy_mod._timing = real_timing


KS_STEP = 4  # A/B change positions: k0, k0 + 4, ... (each leaves at least 2 runs after the change)
TARGET = ("board " + SLOW_PART, "e2e")  # where a slower board s1 must be flagged


def load_runs(runs_dir: Path):
    """(pattern.json, {(variant, position): bench document}) of a collection."""
    meta = json.loads((runs_dir / "pattern.json").read_text())
    docs = {}
    for f in sorted(runs_dir.glob("*-[0-9][0-9].json")):
        d = json.loads(f.read_text())
        if "cpu loop" in d.get("controls", {}):  # the Python loop control's first name
            d["controls"]["python loop"] = d["controls"].pop("cpu loop")
        docs[(d["benchmark"]["variant"], d["benchmark"]["position"])] = d
    return meta, docs


def judge_series(docs: List[dict], tmp: Path, k: Optional[int] = None) -> Dict:
    """Add the runs one by one to a new history and check after each, as the nightly does. Returns per night
    (index j, from MIN_BEFORE on) the alarms in effect: (hop, run position where it starts, figures), and the
    runs whose changes the controls explained (the machine's)."""
    from harness.results import history, regress

    nights = []
    with history.History(tmp) as h:
        for j, doc in enumerate(docs):
            h.add_run(*history.parse_bench(doc))
            if j < regress.MIN_BEFORE:
                continue
            chk = regress.check(h)
            live = [(al.primary.key.hop, al.primary.run_id - 1, sorted({c.key.metric for c in al.changes}))
                    for al in chk.live_alarms]
            machine = sorted({c.run_id - 1 for c in chk.changes if c.explained and c.latest})
            nights.append({"night": j, "alarms": live, "machine": machine})
    return {"k": k, "nights": nights}


def judge(runs_dir: Path, progress=print) -> Dict:
    """The A/A and A/B figures of a collection (see the module's docstring)."""
    meta, docs = load_runs(runs_dir)
    n, k0 = len(meta["burners"]), meta["k0"]
    a = [docs[("A", i)] for i in range(n) if ("A", i) in docs]
    if len(a) < n:
        raise SystemExit(f"{runs_dir}: {len(a)} of {n} A runs: collect again (it goes on where it stopped)")
    out = {"meta": meta, "aa": None, "ab": [], "untrusted": [], "links_not_judged": []}
    from harness.results import history

    for (v, i), d in sorted(docs.items()):  # how the history takes each run: kept out, or some links unjudged
        run = history.parse_bench(d)[0]
        if not run.complete:
            out["untrusted"].append(f"{v}-{i:02d}: {run.error}")
        elif run.env.get("links_not_judged"):
            out["links_not_judged"].append(f"{v}-{i:02d}: {run.env['links_not_judged']}")
    out["runs"] = len(docs)
    with tempfile.TemporaryDirectory() as tmp:
        out["aa"] = judge_series(a, Path(tmp) / "aa.sqlite")
        for size in SIZES:
            v = f"{size:+.0%}"
            for k in range(k0, n - 1, KS_STEP):
                seq = a[:k] + [docs[(v, i)] for i in range(k, n)]
                r = judge_series(seq, Path(tmp) / f"ab{v}{k}.sqlite", k)
                r["size"] = v
                after = [x for x in r["nights"] if x["night"] >= k]
                hit = [x["night"] - k for x in after if any(h in TARGET and start >= k for h, start, _ in x["alarms"])]
                r["delay"] = hit[0] if hit else None
                r["held"] = bool(hit) and all(any(h in TARGET for h, s, _ in x["alarms"])
                                              for x in after if x["night"] >= k + hit[0])
                r["before"] = [x for x in r["nights"] if x["night"] < k and x["alarms"]]
                r["other"] = sorted({h for x in after for h, s, _ in x["alarms"] if h not in TARGET})
                out["ab"].append(r)
                progress(f"A/B {v} from run {k}: " + (f"detected {r['delay']} run(s) after the change" if hit else
                                                       "NOT detected") + (f"; also flagged {r['other']}" if r["other"] else ""))
    return out


def table(res: Dict) -> str:
    """The A/A and A/B table as text."""
    aa = res["aa"]["nights"]
    false = [x for x in aa if x["alarms"]]
    meta = res["meta"]
    lines = [f"load pattern (CPU burners per run position): {''.join(str(b) for b in meta['burners'])}"
             + (f"; load average (1, 5, 15 min) before {meta['loadavg_before']}, after {meta.get('loadavg_after')}"
                if "loadavg_before" in meta else ""),
             f"A/A: {len(res['meta']['burners'])} runs, {len(aa)} nights judged, false alarms on {len(false)} night(s)"
             + (": " + "; ".join(f"night {x['night']}: {x['alarms']}" for x in false) if false else "")
             + f"; nights where the controls explained a change: {sum(1 for x in aa if x['machine'])}",
             f"{'slowdown of board s1':22s} {'A/B series':>10s} {'detected':>9s} {'within 2 runs':>14s} "
             f"{'delay (runs after the change)':>30s} {'false alarms before':>20s}"]
    for size in SIZES:
        v = f"{size:+.0%}"
        rs = [r for r in res["ab"] if r["size"] == v]
        det = [r for r in rs if r["delay"] is not None]
        within = [r for r in det if r["delay"] <= 1]
        lines.append(f"{v:22s} {len(rs):10d} {len(det):>5d}/{len(rs):<3d} {len(within):>10d}/{len(rs):<3d} "
                     f"{', '.join('-' if r['delay'] is None else str(r['delay']) for r in rs):>30s} "
                     f"{sum(len(r['before']) for r in rs):20d}")
    wrong = [f"{r['size']} from run {r['k']}: {', '.join(r['other'])}" for r in res["ab"] if r["other"]]
    lines.append("wrong alarms (another hop's regression in effect after the change): " + ("; ".join(wrong) or "none"))
    if "runs" in res:
        lines.append(f"untrusted runs (kept out of every trend): {len(res['untrusted'])} of {res['runs']}"
                     + "".join(f"\n  {u}" for u in res["untrusted"]))
        lines.append(f"runs with links not judged (their clocks known to > {history_judged_us():.0f} us): "
                     f"{len(res['links_not_judged'])} of {res['runs']}" + "".join(f"\n  {u}" for u in res["links_not_judged"]))
    return "\n".join(lines)


def history_judged_us() -> float:
    from harness.results.history import LINK_JUDGED_US

    return LINK_JUDGED_US


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=24, help="run positions N (default 24)")
    ap.add_argument("--frames", type=int, default=60, help="frames per bench mode (default 60)")
    ap.add_argument("--k0", type=int, default=8, help="first position with slowed runs (default 8)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    ap.add_argument("--replay", type=Path, default=None, help="judge the runs kept in this folder again")
    a = ap.parse_args()
    runs_dir = a.replay or a.out / "regression_detector"
    if a.replay is None:
        collect(runs_dir, a.runs, a.frames, a.k0)
    res = judge(runs_dir)
    text = table(res)
    print(text)
    out = (a.out if a.replay is None else runs_dir.parent)
    (out / "regression_detector.json").write_text(json.dumps(res, indent=1, default=_json_default) + "\n")
    print(f"wrote {out / 'regression_detector.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
