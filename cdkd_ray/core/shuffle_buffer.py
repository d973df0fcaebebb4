"""A seeded local shuffle buffer over training instances: numpy batches drawn at random across chunks."""

from __future__ import annotations

from typing import Iterable, Iterator, Optional

import numpy as np

Batch = dict[str, np.ndarray]


def _rows(batch: Batch) -> int:
    return len(next(iter(batch.values())))


def _gather(parts: list[Batch], index: np.ndarray) -> Batch:
    """Rows `index` of the parts laid end to end, without first concatenating the parts."""
    if len(parts) == 1:
        return {key: column[index] for key, column in parts[0].items()}
    first = _rows(parts[0])
    low, high = index[index < first], index[index >= first] - first
    return {key: np.concatenate([parts[0][key][low], parts[1][key][high]]) for key in parts[0]}


def shuffled_batches(chunks: Iterable[Batch], batch_size: int, buffer: int,
                     seed: Optional[int] = None) -> Iterator[Batch]:
    """Batches of `batch_size` rows, each drawn at random from a pool of at least `buffer` rows.

    `chunks` come in order (e.g. blocks of consecutive images); rows from many chunks mix in the pool, so
    an image's persons spread over batches and batches differ every epoch (seed per epoch). The same seed
    gives the same batches. The last incomplete batch is dropped; `buffer=0` only re-batches, in order.
    Each generation permutes the pool (the rows kept so far plus one new chunk), emits all but `buffer`
    rows of it, and keeps the rest.
    """
    if batch_size < 1 or buffer < 0:
        raise ValueError(f"batch_size must be >= 1 and buffer >= 0 (got {batch_size}, {buffer})")
    rng, kept = np.random.default_rng(seed), None
    for chunk in chunks:
        if not _rows(chunk):
            continue
        parts = [kept, chunk] if kept is not None else [chunk]
        total = sum(map(_rows, parts))
        emitted = (total - buffer) // batch_size * batch_size if total >= buffer + batch_size else 0
        order = rng.permutation(total) if buffer else np.arange(total)
        for start in range(0, emitted, batch_size):
            yield _gather(parts, order[start:start + batch_size])
        kept = _gather(parts, order[emitted:])
    if kept is not None:
        order = rng.permutation(_rows(kept)) if buffer else np.arange(_rows(kept))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield _gather([kept], order[start:start + batch_size])
