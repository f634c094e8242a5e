"""The timing model's clock: waits until a deadline, never returning early, precise to a few us, without
burning a CPU. Shipped with the agent (Python 3.8, standard library only)."""
from __future__ import annotations

import os
import time


def reduce_timer_slack():
    """Linux rounds sleeps up by the timer slack (50 us by default); 1 us lets the timing model sleep closer
    to its deadline and spin less."""
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        libc.prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, ns
    except Exception:
        pass


class Pacer:
    """Waits until a deadline, never returning early, precise to a few us, without burning a CPU.

    A sleep wakes late by the timer's latency (40-60 us on a virtual machine, ~5 us on a quiet board).
    Spinning through all of that would cost every frame that much CPU: with five agents on two cores the
    spinning, not the stages, would limit the pipeline. So the pacer measures the latency once, while the
    agent is idle (a low percentile of a few short sleeps), sleeps until that much before a deadline, and
    spins (yielding the CPU and the GIL) only the rest. Not re-estimated while running: under load a sleep
    wakes late because the CPUs are busy, and spinning longer would only make them busier."""

    def __init__(self, late_ns=60000, margin_ns=5000):
        self.late_ns = late_ns  # how late a sleep wakes on this machine (see calibrate)
        self.margin_ns = margin_ns

    def calibrate(self, sleeps=25, sleep_ns=100000):
        """Measure how late `sleeps` sleeps of `sleep_ns` ns wake (perf_counter_ns), keep the 10th percentile
        in `late_ns` (>= 0) and return it, in ns."""
        late = []
        for _ in range(sleeps):
            t = time.perf_counter_ns()
            time.sleep(sleep_ns / 1e9)
            late.append(time.perf_counter_ns() - t - sleep_ns)
        self.late_ns = max(0, sorted(late)[sleeps // 10])
        return self.late_ns

    def wait_until(self, deadline_ns):
        """Return no earlier than `deadline_ns` (time.perf_counter_ns clock, ns): sleep until `late_ns` +
        `margin_ns` before it, then spin with os.sched_yield."""
        sleep_ns = deadline_ns - time.perf_counter_ns() - self.late_ns - self.margin_ns
        if sleep_ns > 0:
            time.sleep(sleep_ns / 1e9)
        while time.perf_counter_ns() < deadline_ns:
            # not sleep(0): on a virtual machine that is a timer wait too (~20 us); sched_yield releases the
            # GIL (the agent's other threads keep receiving and sending) and lets other processes run
            os.sched_yield()


PACER = Pacer()  # one compute at a time per agent (compute_lock): one pacer is enough
