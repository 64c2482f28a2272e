"""Periodic progress lines with rate and ETA, readable in a terminal and in a SLURM log alike."""

from __future__ import annotations

import logging
import time


class Progress:
    """Counts work units and logs 'label: done/total (pct) rate/s, ETA' at most every `every_s` seconds."""

    def __init__(self, label: str, total: int, logger: logging.Logger, every_s: float = 10.0, unit: str = "it"):
        self.label, self.total, self.logger, self.every_s, self.unit = label, total, logger, every_s, unit
        self.done = 0
        self.start = time.monotonic()
        self._last_log = self.start

    def update(self, n: int = 1, **extra: object) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last_log >= self.every_s or self.done >= self.total:
            self._last_log = now
            self.logger.info(self.line(**extra))

    def line(self, **extra: object) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        remaining = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        details = "".join(f", {k}={v:.4g}" if isinstance(v, float) else f", {k}={v}" for k, v in extra.items())
        return (
            f"{self.label}: {self.done}/{self.total} ({pct:.0f}%) {rate:.2f} {self.unit}/s, "
            f"elapsed {format_seconds(elapsed)}, ETA {format_seconds(remaining)}{details}"
        )


def format_seconds(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
