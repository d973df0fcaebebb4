"""A seeded local shuffle buffer over training instances: numpy batches drawn at random across chunks."""

from __future__ import annotations

from typing import Iterable, Iterator, Optional

import numpy as np

Batch = dict[str, np.ndarray]


def _rows(batch: Batch) -> int:
    return len(next(iter(batch.values())))


def _joined(parts: list[Batch]) -> Batch:
    return parts[0] if len(parts) == 1 else {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _gather(parts: list[Batch], index: np.ndarray) -> Batch:
    """Rows `index` of two parts laid end to end, without first concatenating the parts."""
    if len(parts) == 1:
        return {key: column[index] for key, column in parts[0].items()}
    first = _rows(parts[0])
    low, high = index[index < first], index[index >= first] - first
    return {key: np.concatenate([parts[0][key][low], parts[1][key][high]]) for key in parts[0]}


def pool_target(buffer: int, seen: int) -> int:
    """Rows the pool keeps after `seen` rows arrived: half of them while it fills, then `buffer`."""
    return min(buffer, seen // 2)


def shuffled_batches(chunks: Iterable[Batch], batch_size: int, buffer: int,
                     seed: Optional[int] = None) -> Iterator[Batch]:
    """Batches of `batch_size` rows drawn at random from a pool that fills to `buffer` rows.

    `chunks` come in order (e.g. blocks of consecutive images); rows from many chunks mix in the pool, so
    an image's persons spread over batches and batches differ every epoch (seed per epoch). The same seed
    and chunks give the same batches. The last incomplete batch is dropped; `buffer=0` only re-batches, in
    order. Each generation permutes the pool (the rows kept so far plus the chunks that came since), emits
    all but `pool_target` rows and keeps those. The pool fills as rows come (keeping half of them, as
    WebDataset's `initial`), so the first batch waits for two batches of rows, not for `buffer`; a
    generation waits for at least half the pool's worth of new rows, so a row is copied at most ~3 times.
    """
    if batch_size < 1 or buffer < 0:
        raise ValueError(f"batch_size must be >= 1 and buffer >= 0 (got {batch_size}, {buffer})")
    rng, kept, pending, new, seen = np.random.default_rng(seed), None, [], 0, 0
    for chunk in chunks:
        if not _rows(chunk):
            continue
        pending.append(chunk)
        new, seen = new + _rows(chunk), seen + _rows(chunk)
        keep, held = pool_target(buffer, seen), (_rows(kept) if kept is not None else 0)
        if held + new - keep < batch_size or new < keep // 2:
            continue
        parts = ([kept] if kept is not None else []) + [_joined(pending)]
        total, pending, new = held + new, [], 0
        emitted = (total - keep) // batch_size * batch_size
        order = rng.permutation(total) if buffer else np.arange(total)
        for start in range(0, emitted, batch_size):
            yield _gather(parts, order[start:start + batch_size])
        kept = _gather(parts, order[emitted:])
    rest = ([kept] if kept is not None else []) + pending
    if rest:
        last = _joined(rest)
        order = rng.permutation(_rows(last)) if buffer else np.arange(_rows(last))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield _gather([last], order[start:start + batch_size])
