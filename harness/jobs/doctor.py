"""`splitrack doctor`: is a rack ready for a deploy, and for this plan? Run it before the first deploy on new
boards, and in a nightly job before the bench.

Per board, every check of harness.rack.checks (SSH and host key, the agent's Python >= 3.8 with numpy, pynq
against the rack file's `pynq_version`, what the board is against `kind`, `sudo -n` when the rack asks for
it, free memory, free disk in the workdir, the data port) with numpy and pynq imported (their versions),
plus the board's clock offset from this machine's. On this machine: hls4ml against the versions splitrack is
checked with. With a plan folder: its partitions placed on the boards (enough boards?), the files each board
gets (a real board needs the partition's bitstream and .hwh from `splitrack build`; a virtual one the hls4ml
emulation library, compiled on the first deploy when the cache lacks it), and their size against the
board's free disk.

Every problem is one line that names the board (or `host`, `plan`) and says what to do; `Report.ok` is True
when there is none.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from splitting.errors import UserError
from splitting.report import table

from harness.measure import clocksync
from harness.rack import checks
from harness.rack.checks import BoardReport, Need, Problem
from harness.rack.rackfile import Rack

CLOCK_LIMIT_S = 1.0  # chrony's default step threshold (`makestep 1`): a clock further off gets stepped
CLOCK_PROBES = 5


# --- the clock --------------------------------------------------------------------------------------------
def clock_offset(probes: List[clocksync.Probe]) -> clocksync.OffsetEstimate:
    """A board's offset from host-board-host exchanges (t2 = t3: the board reads its clock once), the
    lowest-delay one kept (clocksync.estimate): its error bound is half that exchange's round trip."""
    return clocksync.estimate(probes, keep=1.0 / max(1, len(probes)))


def clock_problem(est: clocksync.OffsetEstimate, limit_s: float = CLOCK_LIMIT_S) -> Optional[str]:
    """What to say when the board's clock is surely more than `limit_s` off the host's (the offset beyond its
    error bound), else None."""
    off = est.offset_ns / 1e9
    if abs(off) - est.error_ns / 1e9 <= limit_s:
        return None
    return (f"the board's clock is {off:+.1f} s off this machine's (+-{est.error_ns / 1e9:.3f} s): not synced, and "
            "NTP catching up would step it, mid-run if it comes to that (the agent stamps frames with its wall "
            "clock): sync it before you measure (timedatectl set-ntp true with an NTP server it reaches)")


def check_clock(ctx: checks.Context) -> None:
    """CLOCK_PROBES runs of `date +%s%N` on the board, each between two readings of this machine's clock."""
    probes = []
    for _ in range(CLOCK_PROBES):
        t1 = time.time_ns()
        res = ctx.conn.run(["date", "+%s%N"], check=False, timeout=10, stage="clock")
        t4 = time.time_ns()
        text = res.stdout.strip()
        if res.status != 0 or not text.isdigit():
            ctx.facts["clock_offset_ms"] = None
            ctx.fail("clock", f"`date +%s%N` on the board answered {(text or res.stderr.strip())[:60]!r}, not a "
                     "time in ns: install GNU coreutils' date there")
            return
        probes.append((t1, int(text), int(text), t4))
    est = clock_offset(probes)
    ctx.facts["clock_offset_ms"] = round(est.offset_ns / 1e6, 1)
    ctx.facts["clock_error_ms"] = round(est.error_ns / 1e6, 1)
    problem = clock_problem(est)
    if problem:
        ctx.fail("clock", problem)


# --- this machine -----------------------------------------------------------------------------------------
def host_checks() -> Tuple[Dict[str, Any], List[Problem]]:
    """hls4ml installed on this machine in the range splitrack's own metadata requires (what it is checked
    with). Returns (facts, problems); read from package metadata, nothing imported."""
    from importlib.metadata import PackageNotFoundError, requires, version

    from packaging.requirements import Requirement

    facts: Dict[str, Any] = {}
    try:
        have = version("hls4ml")
    except PackageNotFoundError:
        facts["hls4ml"] = None
        return facts, [Problem("host", "hls4ml", "hls4ml is not installed here: install splitrack's locked "
                               "versions (pip install -r requirements.lock, or make setup)")]
    facts["hls4ml"] = have
    try:
        wanted = [Requirement(r) for r in requires("splitrack") or []]
    except PackageNotFoundError:  # a checkout run without being installed: nothing to hold it against
        wanted = []
    for r in wanted:
        if r.name == "hls4ml" and r.marker is None and not r.specifier.contains(have, prereleases=True):
            return facts, [Problem("host", "hls4ml", f"hls4ml {have} is installed, splitrack is checked with "
                                   f"hls4ml{r.specifier}: install that (pip install 'hls4ml{r.specifier}', or "
                                   "pip install -r requirements.lock)")]
    return facts, []


# --- the plan ---------------------------------------------------------------------------------------------
def plan_needs(plan, rack: Rack) -> Tuple[Dict[str, Need], Dict[str, Dict[str, Any]], List[Problem]]:
    """What deploying `plan` on `rack` asks of each board, without compiling anything: (board -> Need,
    board -> facts (partition, artifact), problems: too few boards, a real board's partition without its
    bitstream, a cached library that is damaged)."""
    from splitting.hls import cached_project

    from harness.rack.artifacts import artifact_files
    from harness.rack.deploy import CODE, place

    try:
        placed = place(plan, rack)
    except UserError as e:
        return {}, {}, [Problem("plan", "placement", str(e))]
    needs: Dict[str, Need] = {}
    facts: Dict[str, Dict[str, Any]] = {}
    problems: List[Problem] = []
    for name, b in placed.items():
        files = list(CODE.values())
        facts[b.name] = {"partition": name}
        complete = True
        if b.virtual and cached_project(plan, name) is None:
            complete = False  # not compiled yet: deploy compiles it (minutes); its size is not known
            facts[b.name]["artifact"] = "not compiled yet (deploy compiles it)"
        else:
            try:
                art = artifact_files(plan, name, b)
                files += list(art.values())
                facts[b.name]["artifact"] = ", ".join(sorted(art))
            except UserError as e:
                facts[b.name]["artifact"] = "missing"
                problems.append(Problem(b.name, "bitstream" if not b.virtual else "artifact", str(e)))
        needs[b.name] = Need(name, checks.upload_bytes(files), complete)
    return needs, facts, problems


# --- the report -------------------------------------------------------------------------------------------
@dataclass
class Report:
    """What `doctor` found: the rack file, the plan folder (or None), facts and problems of this machine and
    the plan, and a BoardReport per board."""

    rack: str
    plan: Optional[str]
    boards: List[BoardReport]
    host: Dict[str, Any] = field(default_factory=dict)
    problems: List[Problem] = field(default_factory=list)  # of this machine and of the plan as a whole

    @property
    def all_problems(self) -> List[Problem]:
        """Every problem: this machine's and the plan's, then each board's in rack order."""
        return list(self.problems) + [p for b in self.boards for p in b.problems]

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.all_problems

    def lines(self) -> List[str]:
        """One line per problem (board: check: what is wrong and what to do)."""
        return [p.line() for p in self.all_problems]

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready: ok, rack, plan, host facts, every board's report, and every problem's line."""
        return {"ok": self.ok, "rack": self.rack, "plan": self.plan, "host": dict(self.host),
                "boards": [b.to_dict() for b in self.boards], "problems": self.lines()}

    def table(self) -> str:
        """A compact table, a row per board (numbers in MiB and ms)."""
        with_plan = self.plan is not None
        headers = ["board"] + (["partition"] if with_plan else []) + [
            "python", "numpy", "pynq", "image", "sudo", "mem free", "disk free" + ("/need" if with_plan else ""),
            "clock ms", "data port"]
        rows = []
        for b in self.boards:
            f = b.facts
            disk = f.get("free_disk_mib")
            if with_plan and f.get("need_disk_mib"):
                disk = f"{disk}/{f['need_disk_mib']}"
            clock = f.get("clock_offset_ms")
            if clock is not None:
                clock = f"{clock:+.1f} +-{f.get('clock_error_ms', 0):.1f}"
            rows.append([b.board] + ([f.get("partition", "-")] if with_plan else []) + [
                f.get("python"), f.get("numpy"), f.get("pynq"), f.get("image"), f.get("sudo"),
                f.get("free_memory_mib"), disk, clock, f.get("data_port")])
        host = ", ".join(f"{k} {v}" for k, v in self.host.items())
        return table(headers, rows) + (f"\nthis machine: {host}" if host else "")


def doctor(rack: Rack, plan=None, progress: Callable[[str], None] = lambda s: None) -> Report:
    """Check `rack` (and what `plan` asks of it, when given) as the module docstring says. Never raises for
    a bad board: every problem is in the Report."""
    from harness.rack.health import agent_on_port

    where = str(rack.path) if rack.path else rack.name
    report = Report(where, str(plan.root) if plan is not None and plan.root else None, [])
    report.host, report.problems = host_checks()
    if rack.lab is not None:
        report.problems.append(Problem("rack", "shared", f"{where} names a labgrid coordinator "
                                       f"({rack.lab.coordinator}): its boards are checked by "
                                       f"`splitrack lab check {where}`, which tags the bad ones"))
        return report
    needs, plan_facts, plan_problems = plan_needs(plan, rack) if plan is not None else ({}, {}, [])
    report.problems += [p for p in plan_problems if p.board == "plan"]
    progress(f"checking {len(rack.boards)} boards of {where}")
    report.boards = checks.inspect_boards(rack.boards, needs, imports=True, port_owner=agent_on_port,
                                          extra={"clock": check_clock}, progress=progress)
    for r in report.boards:
        r.facts.update(plan_facts.get(r.board, {}))
        r.problems += [p for p in plan_problems if p.board == r.board]
    return report
