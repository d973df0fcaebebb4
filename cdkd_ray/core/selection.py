"""The one definition of "best": the highest val AP, ties broken by the lower GT heatmap loss.

Early in from-scratch training every epoch scores AP 0, so AP alone cannot rank them; the tie-break
weight is small enough (GT losses are ~1e-3) never to reorder epochs whose APs differ by COCOeval's
resolution. Train's checkpoint ranking, Tune/ASHA, the sweep table and the best-student export all use
`selection_score`.
"""

from __future__ import annotations

from typing import Iterable, TypeVar

SCORE_KEY = "score"  # the metric name Ray Train and Tune rank by
EPOCHS_KEY = "epochs_done"  # epochs a run has trained, counted from its first epoch: unlike Tune's
# training_iteration it does not restart at 1 when a trial resumes from its own checkpoint
TIE_BREAK = 1e-3
T = TypeVar("T")


def selection_score(metrics: dict) -> float:
    """AP - 1e-3 * GT loss: the value every "best" in cdkd-ray maximises."""
    return float(metrics.get("AP", 0.0)) - TIE_BREAK * float(metrics.get("loss_gt", 0.0))


def best_by_score(items: Iterable[T], metrics_of=lambda item: item) -> T:
    """The item whose metrics have the highest selection score (the first one on equal scores)."""
    best, best_score = None, float("-inf")
    for item in items:
        score = selection_score(metrics_of(item))
        if best is None or score > best_score:
            best, best_score = item, score
    if best is None:
        raise ValueError("nothing to choose from")
    return best
