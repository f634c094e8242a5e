"""A log that a stranger cannot flood: at most a burst of lines per period of one kind, the rest counted.

Shipped with the agent (Python 3.8, standard library only)."""
from __future__ import annotations

import threading
import time


class RateLimitedLog:
    """At most `burst` lines per `period` seconds of one kind; the rest counted and summed up in the next line.
    A stranger hammering the port cannot fill the board's SD card with the agent's log."""

    def __init__(self, log, burst=10, period=10.0):
        self.log, self.burst, self.period = log, burst, period
        self.window = 0.0
        self.count = 0
        self.suppressed = 0
        self.lock = threading.Lock()

    def warning(self, fmt, *args):
        """Log `fmt % args` as a warning unless `burst` lines were already logged in this `period`; then
        only count it (the count is logged when the next period starts)."""
        now = time.monotonic()
        with self.lock:
            if now - self.window > self.period:
                if self.suppressed:
                    self.log.warning("%d more such line(s) suppressed in the last %.0f s", self.suppressed,
                                     self.period)
                self.window, self.count, self.suppressed = now, 0, 0
            self.count += 1
            if self.count > self.burst:
                self.suppressed += 1
                return
        self.log.warning(fmt, *args)
