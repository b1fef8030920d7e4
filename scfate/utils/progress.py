"""Progress lines a log file keeps: ``evaluating scfate:norman: 20/62 conditions (12 s)``.

A rich or tqdm bar redraws one terminal line and leaves nothing readable in a redirected log; these are plain log
records through the ``scfate`` logger, so Hydra's log file and ``> run.log`` both show how far a long step got.
"""

from __future__ import annotations

import logging
import time

# the defaults of every Progress: a line each EVERY items, at most one each MIN_SECONDS (0 in tests: every line)
EVERY, MIN_SECONDS = 10, 5.0


class Progress:
    """Count items of one long step and log a line every ``every`` items (and at the last one).

    ``min_seconds`` also keeps a fast step quiet: a line is logged only when that long has passed since the
    previous line (or the start), so that 60 conditions scored in a second do not flood the log, while a step
    that takes minutes reports at the pace it moves."""

    def __init__(self, total: int, what: str, unit: str = "items", every: int | None = None,
                 min_seconds: float | None = None, logger: logging.Logger | None = None):
        self.total, self.what, self.unit = int(total), what, unit
        self.every = max(1, int(EVERY if every is None else every))
        self.min_seconds = float(MIN_SECONDS if min_seconds is None else min_seconds)
        self.log = logger or logging.getLogger("scfate")
        self.done = 0
        self.start = self.last = time.monotonic()

    def step(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        last = self.done == self.total
        # the closing line when the whole step was long enough to be worth one, else every `every` items
        due = now - self.start >= self.min_seconds if last else self.done % self.every == 0
        if due and (last or now - self.last >= self.min_seconds):
            self.last = now
            self.log.info("%s: %d/%d %s (%.0f s)", self.what, self.done, self.total, self.unit, now - self.start)
