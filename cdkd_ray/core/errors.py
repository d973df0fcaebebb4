"""Errors that carry a user-facing report of everything that is wrong."""

from __future__ import annotations


class CdkdError(Exception):
    """Base class for errors the CLI reports as a clean message (exit code 2)."""


class DataValidationError(CdkdError):
    """Input data failed validation; `problems` lists every offending item."""

    def __init__(self, what: str, problems: list[str]):
        self.what = what
        self.problems = list(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"{what}: {len(self.problems)} problem(s)\n{shown}{more}")


class ConfigError(CdkdError):
    """A configuration file or override is invalid."""


class CheckpointError(CdkdError):
    """A checkpoint cannot be read, does not fit the model, or would overwrite something else."""


class InterruptedRun(CdkdError):
    """A run stopped before it ended (Ctrl-C, a stop request); its saved state can be resumed (exit code 130)."""
