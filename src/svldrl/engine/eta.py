"""Seconds left in a run, from what its steps and epochs have measured so far.

Methods with stages (SVL-DRL's RL stages cost several plain steps each) make a single rate per step wrong by
that factor, so the time is kept per stage; a stage not yet run is guessed from the latest measured one and the
method's :meth:`~svldrl.engine.trainer.Trainer.stage_cost` ratio.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable


class StageTimer:
    """Measured seconds per step of each training stage and per epoch beyond the steps (validation,
    checkpoints), and the ETA from them.

    Args:
        stage_of: the training stage of an iteration (the trainer's hook).
        cost_prior: expected cost of a step of a stage relative to a plain segmentation step, used until that
            stage has run.
        iterations: the run's budget of steps.
        num_epochs: its number of epochs.
    """

    def __init__(
        self,
        stage_of: Callable[[int], int],
        cost_prior: Callable[[int], float],
        iterations: int,
        num_epochs: int,
    ) -> None:
        self.stage_of, self.cost_prior = stage_of, cost_prior
        self.iterations, self.num_epochs = iterations, num_epochs
        self.stage_seconds: dict[int, float] = defaultdict(float)
        self.stage_steps: dict[int, int] = defaultdict(int)
        self.overhead_seconds, self.overhead_epochs = 0.0, 0
        #: When the running epoch started (``time.monotonic()``), for progress lines inside it.
        self.epoch_started = time.monotonic()

    def note_steps(self, seconds: float, iteration: int, n: int) -> None:
        """The ``n`` steps before ``iteration`` took ``seconds``: attributed to their stages."""
        if n <= 0:
            return
        for it in range(iteration - n, iteration):
            stage = self.stage_of(it)
            self.stage_seconds[stage] += seconds / n
            self.stage_steps[stage] += 1

    def note_overhead(self, seconds: float) -> None:
        """One epoch spent ``seconds`` beyond its steps."""
        self.overhead_seconds += seconds
        self.overhead_epochs += 1

    def eta(self, iteration: int, epoch: int, extra_done: int = 0, extra_seconds: float = 0.0) -> float:
        """Seconds left after ``iteration`` steps and ``epoch`` epochs: each remaining step at the measured time
        per step of its stage (a stage not yet run: the latest measured stage's time scaled by ``cost_prior``),
        plus the measured overhead per epoch for each remaining epoch; NaN before anything is measured.
        ``extra_*``: steps of the running epoch and their seconds so far."""
        rates = {s: self.stage_seconds[s] / n for s, n in self.stage_steps.items() if n}
        if extra_done:
            s = self.stage_of(iteration - 1)
            n = self.stage_steps.get(s, 0) + extra_done
            rates[s] = (self.stage_seconds.get(s, 0.0) + extra_seconds) / n
        if not rates:
            return math.nan
        ref = max(rates)  # the latest stage measured: closest in cost to what comes next
        remaining = Counter(self.stage_of(it) for it in range(iteration, self.iterations))
        total = sum(
            n * rates.get(s, rates[ref] * self.cost_prior(s) / self.cost_prior(ref))
            for s, n in remaining.items()
        )
        epochs_left = self.num_epochs - epoch - (1 if extra_done else 0)
        overhead = self.overhead_seconds / self.overhead_epochs if self.overhead_epochs else 0.0
        return total + overhead * max(epochs_left, 0)
