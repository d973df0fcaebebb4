"""Names users give (splits, runs, sweeps) become path components: letters, digits, '_', '.', '-' only."""

from __future__ import annotations

import re

from cdkd_ray.core.errors import ConfigError

_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def check_name(value: str, what: str = "name") -> str:
    """`value` if it is a safe single path component (not '.' or '..'), else a ConfigError saying why."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or value in (".", ".."):
        raise ConfigError(f"{what} {value!r} is not a valid name: use letters, digits, '_', '.' and '-' "
                          "(not '.' or '..'; it becomes a folder name)")
    return value
