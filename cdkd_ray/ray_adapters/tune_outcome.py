"""What a Tune grid's fit() came back with: all of it finished, or stopped early (Ctrl-C, a stop request)."""

from __future__ import annotations

from cdkd_ray.core.errors import InterruptedRun


def finished_trials(results) -> int:
    """Trials that ended on their own, were stopped by the scheduler, or failed.

    Not `num_terminated`: when fit() is interrupted, Tune stops the running trials on its way out and marks
    them TERMINATED too. Only a trial that returned or that a scheduler/stopper ended carries `done`.
    """
    return sum(1 for r in results if r.error is not None or (r.metrics or {}).get("done"))


def refuse_unfinished(results, expected: int, what: str) -> None:
    """Tune returns from fit() when stopped: then no outputs are written and the state stays resumable."""
    finished = finished_trials(results)
    if finished < expected:
        raise InterruptedRun(f"{what} stopped before it ended ({finished} of {expected} runs finished); "
                             "its state is saved: run the same command with --resume to continue it. "
                             "No report or outputs were written.")
