"""How many read/decode tasks a pass over a split's parts is cut into: small parts grouped, never too few tasks."""

from __future__ import annotations

import math


def read_task_count(part_rows: list[int], images_per_task: int, slots: int, split_parts: bool = True) -> int:
    """Read tasks for parts of `part_rows` images each, with `slots` tasks able to run at once.

    Each task reads whole parts, about `images_per_task` images in all (small parts are grouped: every
    task pays a fixed start, and a task slot idles between two tasks while the executor notices the end
    of one and starts the next), but there stay at least two tasks per slot, so every slot keeps working
    and a slow task does not hold up the end of a pass. With fewer parts than that: two tasks per slot
    (the reader then splits parts), or with `split_parts` False one part a task (at least two tasks).
    """
    least = 2 * max(1, slots)
    if len(part_rows) <= least:
        return least if split_parts else max(len(part_rows), 2)
    mean_rows = sum(part_rows) / len(part_rows)
    parts_per_task = max(1, round(images_per_task / max(mean_rows, 1.0)))
    return max(least, math.ceil(len(part_rows) / parts_per_task))
