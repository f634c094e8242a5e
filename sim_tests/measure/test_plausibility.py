"""The plausibility of board stamps, on frames built by hand: each kind of impossible stamp is named, and
true stamps (with clock offsets and their error) pass. The same checks on a running rack with a lying board
are in sim_tests/agent/test_agent_trust.py."""
from __future__ import annotations

import pytest

from harness.measure import plausibility
from harness.measure.attribution import FrameTiming, StageStamp, Topology
from harness.measure.clocksync import ClockModel, OffsetEstimate

MS = 1_000_000
T0 = 1_800_000_000 * 10 ** 9  # an epoch time in ns
TOPO = Topology([("host", "s0"), ("s0", "s1"), ("s1", "host")], {"s0": "b0", "s1": "b1"})


def _clock(board, offset_ns, error_ns=20_000, drift_ppm=0.0, span_s=10.0, moved_ns=None):
    before = OffsetEstimate(offset_ns, 2 * error_ns, error_ns, T0, 64, 6)
    moved = drift_ppm * 1e-6 * span_s * 10 ** 9 if moved_ns is None else moved_ns
    after = OffsetEstimate(offset_ns + moved, 2 * error_ns, error_ns, T0 + int(span_s * 10 ** 9), 64, 6)
    return ClockModel(board, before, after)


CLOCKS = {"b0": _clock("b0", 5 * MS), "b1": _clock("b1", -7 * MS)}


def _frame(i=0, **edit):
    """A true frame: host sends at T0 + i ms, s0 (clock +5 ms) 0.1..0.4 ms, s1 (clock -7 ms) 0.5..0.8 ms, the
    host receives at 1 ms. `edit` changes stamps: s0_t_send=..., host_recv=..."""
    t = T0 + i * MS
    s0 = dict(t_recv=t + 100_000 + 5 * MS, t_compute_start=t + 150_000 + 5 * MS, t_compute_end=t + 300_000 + 5 * MS,
              t_send=t + 400_000 + 5 * MS)
    s1 = dict(t_recv=t + 500_000 - 7 * MS, t_compute_start=t + 550_000 - 7 * MS, t_compute_end=t + 700_000 - 7 * MS,
              t_send=t + 800_000 - 7 * MS)
    host = dict(send=t, recv=t + MS)
    for k, v in edit.items():
        who, field = k.split("_", 1)
        {"s0": s0, "s1": s1, "host": host}[who][field] = v
    return FrameTiming(i, host["send"], host["recv"], {"s0": StageStamp("s0", "b0", **s0),
                                                       "s1": StageStamp("s1", "b1", **s1)})


def test_true_stamps_pass_with_and_without_the_clock_mapping():
    frames = [_frame(i) for i in range(20)]
    assert plausibility.problems(frames, TOPO, CLOCKS) == ""
    assert plausibility.problems(frames, TOPO, None) == ""


LIES = [  # (what, frame edit, clocks, words the reason must hold)
    ("dwell of -1e15 us", dict(s0_t_send=T0 - 10 ** 18), CLOCKS, "out of order"),
    ("compute before receive", dict(s1_t_compute_start=T0 - 8 * MS), CLOCKS, "after the compute started"),
    ("receive an hour before the host sent", dict(s0_t_recv=T0 - 3600 * 10 ** 9, s0_t_compute_start=T0 - 3600 * 10 ** 9,
                                                  s0_t_compute_end=T0 - 3600 * 10 ** 9), CLOCKS,
     "before the host sent"),
    ("send after the host received", dict(s1_t_send=T0 + 50 * MS), CLOCKS, "after the host received"),
]


@pytest.mark.parametrize("what,edit,clocks,words", LIES, ids=[x[0] for x in LIES])
def test_each_kind_of_impossible_stamp_is_named(what, edit, clocks, words):
    frames = [_frame(i) for i in range(5)] + [_frame(5, **edit)]
    why = plausibility.problems(frames, TOPO, clocks)
    assert why.startswith("untrusted: 1 of 6 frames") and words in why, why


def test_a_probe_an_hour_ahead_makes_every_link_impossible():
    """The board's probe answers an hour ahead of its frame stamps: mapped with that offset, its stamps fall
    an hour before the host sent the frames (the links come out at -3.6e9 us)."""
    clocks = dict(CLOCKS, b1=_clock("b1", -7 * MS + 3600 * 10 ** 9))
    why = plausibility.problems([_frame(i) for i in range(4)], TOPO, clocks)
    assert why.startswith("untrusted: 4 of 4 frames") and "before the host sent" in why, why


def test_a_clock_that_drifts_like_no_crystal_is_not_believed():
    clocks = dict(CLOCKS, b0=_clock("b0", 5 * MS, drift_ppm=5000.0))
    why = plausibility.problems([_frame(0)], TOPO, clocks)
    assert "5000 ppm" in why and "board b0" in why, why


def test_a_short_run_on_a_busy_machine_is_not_taken_for_a_drifting_clock():
    """Probes 1 s apart whose estimates are good to 2 ms each (a loaded machine) and differ by 3 ms: 3000 ppm
    apparent, but within the two error bounds: believable. An hour in 1 s is not."""
    noisy = dict(CLOCKS, b0=_clock("b0", 5 * MS, error_ns=2 * MS, span_s=1.0, moved_ns=3 * MS))
    assert plausibility.clock_problems(noisy) == []
    stepped = dict(CLOCKS, b0=_clock("b0", 5 * MS, error_ns=2 * MS, span_s=1.0, moved_ns=3600 * 10 ** 9))
    assert "board b0: its clock moved" in plausibility.clock_problems(stepped)[0]


def test_without_a_clock_mapping_a_dwell_beyond_the_end_to_end_is_caught():
    why = plausibility.problems([_frame(0, s1_t_send=T0 - 7 * MS + 5 * 10 ** 9)], TOPO, None)
    assert "longer than the frame's end to end" in why, why


def test_stamps_within_the_clock_error_pass():
    """A stamp just outside the host's window, by less than the mapping's error bound, is measurement error,
    not a lie."""
    f = _frame(0, s0_t_recv=T0 + 5 * MS - 30_000)  # 30 us before the host sent; error bound 20 us, 2x + 100 us
    assert plausibility.problems([f], TOPO, CLOCKS) == ""
