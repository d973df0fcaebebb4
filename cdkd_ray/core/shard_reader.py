"""Reading shard rows without Ray (tools, checks and benchmarks)."""

from __future__ import annotations

from typing import Iterator

import pyarrow.parquet as pq

from cdkd_ray.core.shards import ANNOTATIONS, read_manifest, shard_files
from cdkd_ray.core.instances import rows_from_arrow
from cdkd_ray.core.storage import resolve


def iter_shard_rows(uri: str, split: str, batch_rows: int = 16, s3_endpoint: str | None = None,
                    limit: int | None = None, labelled_only: bool = False) -> Iterator[dict]:
    """Yield batches of shard rows (columns as lists), in manifest order (`labelled_only`: see shard_files)."""
    location, paths = shard_files(uri, split, s3_endpoint, labelled_only)
    seen = 0
    for path in paths:
        with location.fs.open(path, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows):
                if limit is not None:
                    if seen >= limit:
                        return
                    batch = batch.slice(0, limit - seen)
                seen += batch.num_rows
                yield rows_from_arrow(batch)


def load_split_annotations(uri: str, split: str, s3_endpoint: str | None = None) -> dict:
    """The COCO annotation JSON kept beside a split's shards."""
    import json

    location = resolve(uri, s3_endpoint).join(split)
    manifest = read_manifest(location)
    return json.loads(location.join(manifest.get("annotation_file", ANNOTATIONS)).read_bytes())
