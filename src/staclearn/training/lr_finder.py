"""Learning-rate range test: the result, the suggested rate and its plot.

The range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks", WACV,
section 3.3; popularised by fastai's ``lr_find`` and arcgis.learn's ``lr_find``) trains for a
few hundred batches while the learning rate grows exponentially from a tiny to a huge value,
and records the loss. The loss first stays flat (rate too small), then falls, then blows up
(rate too large); a good maximum rate for the one-cycle policy lies where it falls fastest.
``BaseTrainer.lr_find`` runs the test; this module holds what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["LRFindResult", "valley_lr", "steepest_lr"]


def _trim(n: int) -> slice:
    # fastai drops the first tenth (warm-up of the smoothing) and the last 5 points (divergence)
    start, end = n // 10, n - 5
    if end - start < 2:
        start, end = 0, n
    return slice(start, end)


def valley_lr(lrs: np.ndarray, losses: np.ndarray) -> int:
    """Index of fastai's "valley" suggestion: halfway along the longest valley of the loss.

    The valley is the longest run of points whose (smoothed) loss keeps decreasing (longest
    decreasing subsequence); the suggestion sits at start + 1/3 + 1/6 of its length, i.e. in
    its middle, which is less sensitive to noise than the steepest point. Developed by Esri
    for arcgis.learn (fast.ai forum, "Automated learning rate suggester") and the default of
    fastai's ``lr_find`` since 2.5 (``fastai.callback.schedule.valley``); as there, the first
    tenth and the last 5 points are dropped first.

    Args:
        lrs: ``(N,)`` learning rates, increasing.
        losses: ``(N,)`` smoothed losses.

    Returns:
        An index into ``lrs``.
    """
    sl = _trim(len(losses))
    loss = np.asarray(losses, dtype=np.float64)[sl]
    n = len(loss)
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if loss[i] < loss[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return (sl.start or 0) + max_start + int(sections) + int(sections / 2)


def steepest_lr(lrs: np.ndarray, losses: np.ndarray) -> int:
    """Index of the steepest descent of the loss against ``log(lr)``.

    The minimum of the finite difference ``d loss / d log(lr)`` (fastai's ``steep``,
    torch-lr-finder's ``suggest_lr``), after dropping the first tenth and the last 5 points.

    Args:
        lrs: ``(N,)`` learning rates, increasing.
        losses: ``(N,)`` smoothed losses.

    Returns:
        An index into ``lrs`` (the left point of the steepest step).
    """
    sl = _trim(len(losses))
    lr = np.log(np.asarray(lrs, dtype=np.float64)[sl])
    loss = np.asarray(losses, dtype=np.float64)[sl]
    grad = np.diff(loss) / np.diff(lr)
    return (sl.start or 0) + int(np.nanargmin(grad))


@dataclass(frozen=True)
class LRFindResult:
    """Outcome of a learning-rate range test.

    Attributes:
        lrs: ``(N,) float64`` learning rates tried, one per batch, increasing exponentially.
        losses: ``(N,) float64`` training loss smoothed by a debiased exponential moving
            average (``beta`` 0.98, as fastai), the curve the suggestion is read from.
        raw_losses: ``(N,) float64`` loss of each batch.
        suggested_lr: fastai's "valley" rate (:func:`valley_lr`), a maximum rate for
            ``fit(epochs, lr)``.
        steepest_lr: the rate of steepest descent (:func:`steepest_lr`); often 2-10x lower.
        diverged: the test stopped early because the smoothed loss exceeded ``diverge`` times
            its minimum (or became NaN / inf).
    """

    lrs: np.ndarray
    losses: np.ndarray
    raw_losses: np.ndarray
    suggested_lr: float
    steepest_lr: float
    diverged: bool

    @classmethod
    def from_losses(cls, lrs: list[float], losses: list[float], raw_losses: list[float], *, diverged: bool) -> LRFindResult:
        """Build the result and its suggestions from the recorded curves (at least 2 points)."""
        lr = np.asarray(lrs, dtype=np.float64)
        loss = np.asarray(losses, dtype=np.float64)
        # a diverged last point (inf / NaN) must not be the "lowest" loss of a valley
        finite = np.where(np.isfinite(loss), loss, np.inf)
        return cls(
            lrs=lr,
            losses=loss,
            raw_losses=np.asarray(raw_losses, dtype=np.float64),
            suggested_lr=float(lr[valley_lr(lr, finite)]),
            steepest_lr=float(lr[steepest_lr(lr, finite)]),
            diverged=diverged,
        )

    def plot(self, ax: Axes | None = None, *, show_steepest: bool = False) -> Axes:
        """Plot the smoothed loss against the learning rate (log x axis), with the suggestion
        marked by a red dot labelled ``valley: <rate>``.

        Args:
            ax: axes to draw on; default a new figure's.
            show_steepest: also mark :attr:`steepest_lr` (orange).

        Returns:
            The matplotlib Axes.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        keep = np.isfinite(self.losses)
        ax.plot(self.lrs[keep], self.losses[keep], color="C0", label="smoothed loss")
        i = int(np.argmin(np.abs(self.lrs - self.suggested_lr)))
        ax.plot([self.suggested_lr], [self.losses[i]], "o", color="red", label=f"valley: {self.suggested_lr:.2e}")
        if show_steepest:
            j = int(np.argmin(np.abs(self.lrs - self.steepest_lr)))
            ax.plot([self.steepest_lr], [self.losses[j]], "o", color="orange", label=f"steepest: {self.steepest_lr:.2e}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss (smoothed)")
        ax.legend()
        return ax
