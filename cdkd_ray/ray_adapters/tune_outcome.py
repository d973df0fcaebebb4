"""How a Tune grid's fit() came back (every trial ended, or Ctrl-C stopped it), and what a resume keeps."""

from __future__ import annotations

import logging
import re
import signal
import sys
import threading

from cdkd_ray.core.errors import InterruptedRun
from cdkd_ray.core.storage import Location


def fit_or_refuse(tuner, what: str):
    """tuner.fit()'s results, or InterruptedRun when Ctrl-C (SIGINT, or Tune's SIGUSR1) ended it early.

    Tune catches the first Ctrl-C, stops the running trials (marking them TERMINATED like finished ones)
    and returns. Whether that happened is told by its handler, not by the trials: a trial that finished
    before the interrupt comes back from a resume without `done`. Tune puts back the SIGINT handler it
    found when it takes the signal, so a sentinel installed here is back in place only after one.
    """
    if threading.current_thread() is not threading.main_thread():
        return tuner.fit()  # Tune catches no signals off the main thread

    def _sentinel(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, _sentinel)
    try:
        results = tuner.fit()
        interrupted = signal.getsignal(signal.SIGINT) is _sentinel
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise InterruptedRun(f"{what} was interrupted before it ended; its state is saved: run the same command "
                             "with --resume to continue it. No report or outputs were written.")
    return results


def say_kept_concurrency(what: str, recorded: int, requested: int) -> None:
    """Tell a resume asking for another max_concurrent_trials (on stderr) that Tune keeps the old one.

    Tune.restore has no way to change it: the concurrency lives in the search algorithm's saved state
    (checked: a grid started at 1 and resumed with 4 still ran one trial at a time).
    """
    if recorded != requested:
        print(f"{what}: max_concurrent_trials stays {recorded} on resume (Ray Tune restores it with the saved "
              f"state; the {requested} asked for now does not apply).", file=sys.stderr, flush=True)


# Tune's warning, on restore, for trials that had started but not reported when the grid was interrupted
_ANALYSIS_LOGGER = "ray.tune.analysis.experiment_analysis"
_NOT_REPORTED = re.compile(r"- \S+: FileNotFoundError\('Could not fetch metrics for \S+: both result\.json and "
                           r"progress\.csv were not found at (?:.*/)?([^/']+)'")  # the trial's folder: its parameters


class _UnreportedTrials(logging.Filter):
    """Holds back Tune's "Failed to fetch metrics" warning when every trial it names had not reported yet;
    keeps their folders' names."""

    def __init__(self) -> None:
        super().__init__()
        self.trials: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        head, *lines = record.getMessage().splitlines() or [""]
        names = [m.group(1) for m in map(_NOT_REPORTED.match, lines) if m]
        if not head.startswith("Failed to fetch metrics for") or not lines or len(names) != len(lines):
            return True  # anything else Tune says is passed on as it is
        self.trials += names
        return False


def restore_tuner(grid_dir: Location, trainable, storage_filesystem, what: str):
    """The interrupted grid's Tuner, unfinished and errored trials to run again, said in our words.

    Tune warns with a FileNotFoundError for each trial that had started but not reported before the
    interrupt (no result.json yet); such a trial has nothing to lose and runs from its start, so one line
    on stderr says that instead."""
    from ray import tune

    path = grid_dir.path if grid_dir.is_remote else grid_dir.uri  # Tune takes an S3 path without its scheme
    logger, held = logging.getLogger(_ANALYSIS_LOGGER), _UnreportedTrials()
    logger.addFilter(held)
    try:
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=storage_filesystem)
    finally:
        logger.removeFilter(held)
    if held.trials:
        print(f"{what}: {len(held.trials)} trial(s) had not reported an epoch when interrupted "
              f"({', '.join(held.trials)}); they run from the start.", file=sys.stderr, flush=True)
    return tuner
