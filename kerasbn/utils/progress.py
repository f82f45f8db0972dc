"""A periodic progress line with count, rate and ETA for long loops (dataset builds, training)."""

import sys
import time


def format_seconds(seconds):
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Prints `desc: done/total (pct) rate/s ETA h:mm:ss` at most every `every` seconds."""

    def __init__(self, total, desc, unit="images", every=2.0, stream=None):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.every = every
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = time.perf_counter()
        self._last = self.start

    def update(self, n):
        self.done += n
        now = time.perf_counter()
        if now - self._last >= self.every or self.done >= self.total:
            self._last = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def rate(self, now=None):
        elapsed = (now or time.perf_counter()) - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self, now=None):
        rate = self.rate(now)
        eta = (self.total - self.done) / rate if rate > 0 else 0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (f"{self.desc}: {self.done}/{self.total} ({pct:.0f}%) "
                f"{rate:.0f} {self.unit}/s ETA {format_seconds(eta)}")
