"""A seeded local shuffle buffer over training instances: numpy batches drawn at random across chunks."""

from __future__ import annotations

from typing import Iterable, Iterator, Optional

import numpy as np

Batch = dict[str, np.ndarray]


def _rows(batch: Batch) -> int:
    return len(next(iter(batch.values())))


def pool_target(buffer: int, seen: int) -> int:
    """Rows the pool keeps after `seen` rows arrived: half of them while it fills, then `buffer`."""
    return min(buffer, seen // 2)


class SlotPool:
    """Rows held in fixed slots, one preallocated array per column: a row is copied in once and out once.

    Chunks may be read-only views (of Ray's object store, say): rows are copied out of them as they go
    in, so no chunk is held, and every batch taken out is a fresh array of its own.
    """

    def __init__(self, like: Batch, capacity: int):
        self.columns = {key: np.empty((capacity, *column.shape[1:]), column.dtype) for key, column in like.items()}
        self.queue = np.empty(0, np.int64)  # occupied slots, oldest first
        self.free = np.arange(capacity)

    @property
    def held(self) -> int:
        return len(self.queue)

    def put(self, chunk: Batch, start: int, stop: int) -> None:
        """Copy rows start:stop of `chunk` into free slots (stop - start <= len(self.free))."""
        if chunk.keys() != self.columns.keys():
            raise ValueError(f"a chunk has columns {sorted(chunk)}, the earlier ones {sorted(self.columns)}")
        slots, self.free = self.free[:stop - start], self.free[stop - start:]
        for key, column in self.columns.items():
            rows = chunk[key]
            if rows.shape[1:] != column.shape[1:] or rows.dtype != column.dtype:
                raise ValueError(f"column {key!r}: rows of {rows.dtype} {rows.shape[1:]} after rows of "
                                 f"{column.dtype} {column.shape[1:]}")
            column[slots] = rows[start:stop]
        self.queue = np.concatenate([self.queue, slots])

    def take(self, positions: np.ndarray) -> Batch:
        """The rows at `positions` of the queue (0 = the oldest), removed from the pool."""
        slots = self.queue[positions]
        self.queue, self.free = np.delete(self.queue, positions), np.concatenate([self.free, slots])
        return {key: column[slots] for key, column in self.columns.items()}


def shuffled_batches(chunks: Iterable[Batch], batch_size: int, buffer: int,
                     seed: Optional[int] = None) -> Iterator[Batch]:
    """Batches of `batch_size` rows drawn at random from a pool that fills to `buffer` rows.

    `chunks` come in order (e.g. blocks of consecutive images); rows from many chunks mix in the pool, so
    an image's persons spread over batches and batches differ every epoch (seed per epoch). The same seed
    and chunks give the same batches. The last incomplete batch is dropped; `buffer=0` only re-batches, in
    order. Rows go into a pool of `buffer + batch_size` slots as room frees up; each batch is drawn at
    random from the rows held once the pool holds more than `pool_target` of them. The pool fills as rows
    come (keeping half of them, as WebDataset's `initial`), so the first batch waits for two batches of
    rows, not for `buffer`. A row is copied twice, into its slot and out with its batch, whatever the
    chunk size: the pool never concatenates chunks or moves the rows it keeps.
    """
    if batch_size < 1 or buffer < 0:
        raise ValueError(f"batch_size must be >= 1 and buffer >= 0 (got {batch_size}, {buffer})")
    rng, pool, seen = np.random.default_rng(seed), None, 0

    def draw() -> np.ndarray:
        return rng.choice(pool.held, batch_size, replace=False) if buffer else np.arange(batch_size)

    for chunk in chunks:
        rows, start = _rows(chunk), 0
        pool = pool if pool is not None or not rows else SlotPool(chunk, buffer + batch_size)
        while start < rows:
            stop = start + min(len(pool.free), rows - start)
            pool.put(chunk, start, stop)
            seen, start = seen + stop - start, stop
            while pool.held - batch_size >= pool_target(buffer, seen):
                yield pool.take(draw())
    while pool is not None and pool.held >= batch_size:
        yield pool.take(draw())
