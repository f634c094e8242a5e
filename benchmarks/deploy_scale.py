"""How deployment scales with the rack: `rack up`, `deploy --force` and `rack down` at 1, 4, 16 and 64 boards.

    .venv/bin/python benchmarks/deploy_scale.py [--boards 1,4,16,64]
        [--deploy-max 16] [--out benchmarks/out]

For N boards: `splitrack rack up --n-boards N`, then `splitrack deploy --force` of an N-partition plan (a chain
of N small Dense layers, cut after every layer, so partition i goes to board i), then `splitrack rack down`;
each command timed from outside as a user runs it (wall clock, process start included). The plans' hls4ml
projects are compiled and their fast models written (or taken from the cache) before any timing. --deploy-max skips the deploy above that
size (each partition is its own hls4ml compile, about 20 s the first time). Ratios are to the 1-board run of
this same invocation. Prints a table; writes deploy_scale.json and deploy_scale.png in --out.

CPU time is counted beside the wall clock, because every virtual board of the rack runs on this machine's few
cores: "host CPU" is the splitrack command's own (user + system, from the kernel's rusage of the reaped
command), "board CPU" what the rack's board processes and the agents they started spent during the command
(utime + stime + reaped children's, from /proc/PID/stat). "CPU floor" = (host + board CPU) / cores: no
scheduling makes the command finish sooner on this machine. On a real rack every board has its own CPU, so
only the host's share stays on the host.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SPLITRACK = [sys.executable, "-m", "harness.cli.commands"]


def chain_plan(n: int, folder: Path):
    """A plan of n partitions, one Dense(8) each, compiled (cached) before it is returned."""
    from splitting import hls
    from splitting.plan import Plan
    from splitting.split import split_model, write_plan

    if not (folder / "plan.json").is_file():
        import keras

        keras.utils.set_random_seed(n)
        layers = [keras.Input((8,))] + [keras.layers.Dense(8, activation="relu", name=f"d{i}") for i in range(n)]
        plan, models = split_model(keras.Sequential(layers), at=[f"d{i}" for i in range(n - 1)])
        write_plan(plan, models, folder)
    from harness.rack.fast_build import board_files

    plan = Plan.load(folder)
    for i, name in enumerate(plan.partitions):
        hls.project_dir(plan, name)
        board_files(plan, name, {})  # the virtual boards' fast model, cached beside the project like it
        print(f"  plan of {n}: partition {i + 1}/{n} compiled", flush=True)
    return plan


def stop_started_boards(state: Path) -> None:
    """Stop the boards a failed `rack up` recorded in its state folder (each by its pid, checked)."""
    from concurrent.futures import ThreadPoolExecutor

    from harness.rack.virtual_rack import BoardProcess, stop_board

    f = state / "rack.json"
    if f.is_file():
        procs = [BoardProcess(**p) for p in json.loads(f.read_text())["pids"]]
        with ThreadPoolExecutor(16) as ex:
            list(ex.map(stop_board, procs))
        print(f"  stopped the {len(procs)} boards the failed rack up left running", flush=True)


TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    """CPU seconds of process `pid` and of its children it has reaped (proc(5): utime stime cutime cstime,
    fields 14-17 of /proc/PID/stat), or 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    f = stat.rsplit(")", 1)[1].split()
    return sum(int(x) for x in f[11:15]) / TICK


def board_cpu(state: Path) -> dict:
    """pid -> CPU seconds so far of every process of the virtual rack in `state`: the board servers (pids in
    rack.json) and what runs in their homes (the agents)."""
    from harness.rack.virtual_board import home_processes

    f = state / "rack.json"
    if not f.is_file():
        return {}
    procs = json.loads(f.read_text())["pids"]
    pids = {p["pid"] for p in procs} | set(home_processes(*[p["home"] for p in procs]))
    return {pid: _proc_cpu(pid) for pid in pids}


def timed(cmd, log, state: Path = None) -> tuple:
    """Run `cmd`; (wall s, host CPU s, board CPU s). Board CPU: what the rack's processes spent meanwhile
    (processes that appeared during the command count whole)."""
    before = board_cpu(state) if state else {}
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed (exit {p.returncode}); see {log.name}")
    after = board_cpu(state) if state else {}
    boards = sum(v - before.get(pid, 0.0) for pid, v in after.items())
    return dt, ru.ru_utime + ru.ru_stime, boards


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--boards", default="1,4,16,64")
    ap.add_argument("--deploy-max", type=int, default=64)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "deploy-scale")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    a = ap.parse_args(argv)
    sizes = [int(s) for s in a.boards.split(",")]
    a.work.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    plans = {n: chain_plan(n, a.work / f"plan-{n}") for n in sizes if n <= a.deploy_max}
    rows = []
    with open(a.work / "commands.log", "w") as log:
        for n in sizes:
            rack = a.work / f"rack-{n}.toml"
            row = {"boards": n}
            print(f"{n} boards: rack up ...", flush=True)
            state = a.work / f"state-{n}"
            try:
                row["rack_up_s"], row["rack_up_host_cpu_s"], row["rack_up_board_cpu_s"] = timed(
                    SPLITRACK + ["rack", "up", "--n-boards", str(n), "--out", str(rack), "--state", str(state)], log, state)
            except SystemExit:
                stop_started_boards(state)  # a failed `rack up` can leave its boards running
                raise
            try:
                if n in plans:
                    print(f"{n} boards: deploy --force of {n} partitions ...", flush=True)
                    row["deploy_s"], row["deploy_host_cpu_s"], row["deploy_board_cpu_s"] = timed(
                        SPLITRACK + ["deploy", "--boards", str(rack), "--force", str(plans[n].root)], log, state)
            finally:
                print(f"{n} boards: rack down ...", flush=True)
                row["rack_down_s"], row["rack_down_host_cpu_s"], _ = timed(SPLITRACK + ["rack", "down", str(rack)], log)
            rows.append(row)
            print("  " + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k.endswith("_s")), flush=True)
    base = rows[0]
    cores = len(os.sched_getaffinity(0))
    for r in rows:
        for k in ("rack_up", "deploy"):
            if f"{k}_s" in r:
                r[f"{k}_cpu_floor_s"] = (r[f"{k}_host_cpu_s"] + r[f"{k}_board_cpu_s"]) / cores
    print(f"\n{cores} cores. wall s (x the 1-board run); host + board CPU s; CPU floor s = CPU / cores (x the 1-board wall)")
    print(f"{'boards':>6s} | {'rack up':^40s} | {'deploy --force':^40s} | {'rack down':^14s}")
    for r in rows:
        cells = []
        for k in ("rack_up", "deploy"):
            v = r.get(f"{k}_s")
            if v is None or not base.get(f"{k}_s"):
                cells.append(f"{'-':^40s}")
                continue
            b = base[f"{k}_s"]
            cells.append(f"{v:6.2f} ({v / b:4.1f}x); {r[f'{k}_host_cpu_s']:5.2f} + {r[f'{k}_board_cpu_s']:6.2f}; "
                         f"{r[f'{k}_cpu_floor_s']:5.2f} ({r[f'{k}_cpu_floor_s'] / b:4.1f}x)")
        v = r["rack_down_s"]
        cells.append(f"{v:6.2f} ({v / base['rack_down_s']:4.1f}x)")
        print(f"{r['boards']:6d} | " + " | ".join(cells))
    (a.out / "deploy_scale.json").write_text(json.dumps({"cores": cores, "rows": rows}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k, label in (("rack_up_s", "rack up"), ("deploy_s", "deploy --force"), ("rack_down_s", "rack down")):
        pts = [(r["boards"], r[k]) for r in rows if k in r]
        if pts:
            line, = ax.plot(*zip(*pts), marker="o", label=label)
            floor = [(r["boards"], r[k.replace("_s", "_cpu_floor_s")]) for r in rows if k.replace("_s", "_cpu_floor_s") in r]
            if floor:
                ax.plot(*zip(*floor), ls=":", color=line.get_color(), label=f"{label}: CPU floor ({cores} cores)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("virtual boards (deploy: one partition per board)")
    ax.set_ylabel("wall clock, s")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(a.out / "deploy_scale.png", dpi=120)
    print(f"wrote {a.out / 'deploy_scale.json'} and deploy_scale.png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
