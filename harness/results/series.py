"""Series of runs and the events on them.

A series is the user's label, model and rack (`RunInfo.series`). What changes along it without making it
another experiment is an event, marked where it happens, where a change point may be expected:

    plan       the plan's content hash changed (a new split, new weights, new precision ...)
    tuning     the FIFO depths the RTL cosimulation found (plan/tuning.json, not part of the plan's hash)
    splitrack  splitrack's own version (or commit, from a checkout)
    machine    the host that ran it

The user's commit is not an event: it is what the series follows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

from .history import RunInfo

Series = Tuple[str, str, str]  # (label, model, rack)


def _tuning(r: RunInfo) -> str:
    t = r.env.get("tuning") or {}
    return str(t.get("hash") or "")


# kind -> (what a run holds of it, how a change reads); '' means "not recorded" (older runs): no event
EVENT_KINDS: Dict[str, Tuple[Callable[[RunInfo], str], str]] = {
    "plan": (lambda r: r.plan_hash, "plan {before} -> {after} (boards re-flashed)"),
    "tuning": (_tuning, "FIFO depths {before} -> {after} (plan/tuning.json of splitrack cosim)"),
    "splitrack": (lambda r: r.splitrack, "splitrack {before} -> {after}"),
    "machine": (lambda r: r.machine, "machine {before} -> {after}"),
}


@dataclass(frozen=True)
class Event:
    """Something that changed at run `run_id` (position `index` in its series): `kind` (EVENT_KINDS), the
    value before and after."""

    run_id: int
    index: int
    kind: str
    before: str
    after: str

    def describe(self) -> str:
        """e.g. 'plan 1a2b -> 3c4d (boards re-flashed)'; a tuning that appears reads 'none -> HASH'."""
        return EVENT_KINDS[self.kind][1].format(before=self.before or "none", after=self.after or "none")


def group(runs: List[RunInfo]) -> Dict[Series, List[RunInfo]]:
    """Runs by series, each oldest first (the order of `runs`)."""
    out: Dict[Series, List[RunInfo]] = {}
    for r in runs:
        out.setdefault(r.series, []).append(r)
    return out


def events(runs: List[RunInfo]) -> List[Event]:
    """The events along one series' runs (oldest first): every kind whose value differs from the previous
    run's. A value not recorded before (an older history) is no event; a tuning that appears or goes is."""
    out: List[Event] = []
    for i in range(1, len(runs)):
        for kind, (value, _) in EVENT_KINDS.items():
            a, b = value(runs[i - 1]), value(runs[i])
            if a != b and (a or kind == "tuning"):
                out.append(Event(runs[i].run_id, i, kind, a, b))
    return out


def events_at(evs: List[Event], run_id: int) -> List[Event]:
    """The events of `evs` at run `run_id`."""
    return [e for e in evs if e.run_id == run_id]
