"""What a Tune grid's fit() came back with: all of it finished, or stopped early (Ctrl-C, a stop request)."""

from __future__ import annotations

from cdkd_ray.core.errors import InterruptedRun


def refuse_unfinished(results, expected: int, what: str) -> None:
    """Tune returns from fit() when stopped: then no outputs are written and the state stays resumable."""
    finished = results.num_terminated + results.num_errors
    if finished < expected:
        raise InterruptedRun(f"{what} stopped before it ended ({finished} of {expected} runs finished); "
                             "its state is saved: run the same command with --resume to continue it. "
                             "No report or outputs were written.")
