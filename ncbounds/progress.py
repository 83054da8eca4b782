"""A minimal progress bar with ETA on stderr (no dependency), silent when disabled."""

from __future__ import annotations

import sys
import time


class Progress:
    """``Progress(total, label)``; call :meth:`advance` per item; :meth:`close` at the end.

    Draws in place on a terminal; elsewhere prints a line at most every 10 s, so logs stay short.
    """

    def __init__(self, total: int, label: str, enabled: bool = True, stream=None) -> None:
        self.total, self.label, self.enabled = max(int(total), 1), label, enabled
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = time.perf_counter()
        self._last = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        interval = 0.2 if self._tty else 10.0
        if self.enabled and (now - self._last >= interval or self.done >= self.total):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        frac = min(self.done / self.total, 1.0)
        elapsed = now - self.start
        eta = elapsed / frac - elapsed if frac > 0 else float("nan")
        bar = "#" * int(frac * 24)
        text = f"{self.label} [{bar:<24}] {self.done}/{self.total} {elapsed:5.1f}s eta {eta:5.1f}s"
        self.stream.write(("\r" + text) if self._tty else (text + "\n"))
        self.stream.flush()

    def close(self) -> None:
        """End the line of an in-place bar (once; later calls do nothing)."""
        if self.enabled and self._tty and self._last:
            self.stream.write("\n")
            self.stream.flush()
        self._last = 0.0
