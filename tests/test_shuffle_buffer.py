"""The core's local shuffle buffer (no Ray): seeded, mixing across chunks, every instance once."""

import numpy as np
import pytest

from cdkd_ray.core.shuffle_buffer import shuffled_batches


def chunks(sizes, width: int = 3):
    """Chunks of consecutive row ids (as blocks of consecutive images arrive), with a 2-d column beside."""
    start = 0
    for size in sizes:
        ids = np.arange(start, start + size)
        yield {"id": ids, "image": np.repeat(ids[:, None], width, axis=1).astype(np.uint8)}
        start += size


def ids_of(batches) -> list[list[int]]:
    return [b["id"].tolist() for b in batches]


def test_every_row_is_drawn_once_and_columns_stay_aligned():
    sizes = [16, 0, 40, 16, 16, 7, 33]
    batches = list(shuffled_batches(chunks(sizes), batch_size=8, buffer=32, seed=5))
    drawn = [i for b in ids_of(batches) for i in b]
    assert all(len(b["id"]) == 8 for b in batches)
    assert len(drawn) == len(set(drawn)) and sum(sizes) - len(drawn) < 8  # only the last partial batch dropped
    for b in batches:  # a row's columns travel together
        assert (b["image"] == (b["id"][:, None] % 256).astype(np.uint8)).all()


def test_the_same_seed_repeats_and_another_seed_or_epoch_draws_anew():
    draw = lambda seed: ids_of(shuffled_batches(chunks([16] * 8), batch_size=8, buffer=32, seed=seed))  # noqa: E731
    assert draw(1) == draw(1)
    assert draw(1) != draw(2)


def test_batches_mix_rows_from_many_chunks_and_an_unshuffled_buffer_keeps_the_order():
    mixed = ids_of(shuffled_batches(chunks([4] * 64), batch_size=8, buffer=64, seed=0))
    chunks_per_batch = np.mean([len({i // 4 for i in b}) for b in mixed])
    assert chunks_per_batch > 5  # 8 rows from ~7 different 4-row chunks, not 2 whole chunks
    plain = ids_of(shuffled_batches(chunks([5, 6, 7]), batch_size=4, buffer=0))
    assert plain == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="batch_size"):
        list(shuffled_batches(chunks([4]), batch_size=0, buffer=4))
    with pytest.raises(ValueError, match="buffer"):
        list(shuffled_batches(chunks([4]), batch_size=2, buffer=-1))


def test_the_first_batch_waits_for_two_batches_of_rows_not_for_the_whole_buffer():
    """Behind a slow producer (a teacher pool) a pool that must fill to `buffer` before its first batch
    serialises producer and trainer: the bench's 240-instance epoch waited for all of them. The pool
    fills as rows come instead, and still mixes across chunks once full."""
    pulled = []

    def counted(sizes):
        for chunk in chunks(sizes):
            pulled.append(len(chunk["id"]))
            yield chunk

    stream = shuffled_batches(counted([8] * 64), batch_size=8, buffer=128, seed=0)
    first = next(stream)
    assert sum(pulled) == 16 and len(first["id"]) == 8
    rest = ids_of(stream)
    late = rest[-8:]  # once the pool holds 128 rows, a batch draws from ~16 chunks of 8
    assert np.mean([len({i // 8 for i in b}) for b in late]) > 5
    drawn = first["id"].tolist() + [i for b in rest for i in b]
    assert sorted(drawn) == list(range(512))


def test_rows_are_copied_out_of_read_only_chunks_larger_than_the_pool():
    """Chunks are views of Ray's object store (read-only, ~600 rows at a time): every batch is an array of
    its own, and a chunk far larger than the pool still yields every row once."""
    def read_only(sizes):
        for chunk in chunks(sizes):
            for column in chunk.values():
                column.flags.writeable = False
            yield chunk

    seen = []
    for batch in shuffled_batches(read_only([500, 3, 300]), batch_size=8, buffer=32, seed=2):
        assert batch["image"].flags.writeable and batch["image"].base is None  # no view of a chunk or the pool
        assert (batch["image"] == (batch["id"][:, None] % 256).astype(np.uint8)).all()
        seen += batch["id"].tolist()
    assert len(seen) == len(set(seen)) and 803 - len(seen) < 8


def test_a_chunk_unlike_the_first_is_refused_by_name():
    first = {"id": np.arange(4), "image": np.zeros((4, 3), np.uint8)}
    for other, match in (({"id": np.arange(4), "image": np.zeros((4, 5), np.uint8)}, "column 'image'.*uint8"),
                         ({"id": np.arange(4), "image": np.zeros((4, 3), np.float32)}, "column 'image'.*float32"),
                         ({"id": np.arange(4)}, r"columns \['id'\]")):
        with pytest.raises(ValueError, match=match):
            list(shuffled_batches([first, other], batch_size=2, buffer=4, seed=0))
