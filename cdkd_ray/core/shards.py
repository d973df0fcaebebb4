"""Writing COCO keypoint data as Parquet shards (one row per image) to a folder or s3://, and checking them.

Layout: ``ROOT/<split>/manifest.json`` + ``ROOT/<split>/v-<version>/part-00000.parquet ... annotations.json``.
The manifest, switched last (see shard_publish), lists every part file with its row count, size and
SHA-256; readers trust only what it lists.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from cdkd_ray.core.coco.annotations import CocoKeypointSet, parse_coco_keypoints
from cdkd_ray.core.coco.images import image_problem
from cdkd_ray.core.storage import Location, resolve
from cdkd_ray.core.errors import DataValidationError
from cdkd_ray.core.keypoints import is_labelled_person
from cdkd_ray.core.names import check_name
from cdkd_ray.core.shard_publish import (
    MANIFEST, VERSION_PREFIX, acquire_split_lease, collect_garbage, lease_holder, leftovers, new_version, read_pointer,
    remove_version, root_leftovers, switch_pointer, version_of,
)

log = logging.getLogger("cdkd_ray.shards")
T, R = TypeVar("T"), TypeVar("R")

SCHEMA_VERSION = 1
ANNOTATIONS = "annotations.json"
REPORT = "skipped_report.json"
ROW_GROUP_TARGET_BYTES = 32 * 1024 * 1024

PERSON_TYPE = pa.struct([
    ("ann_id", pa.int64()),
    ("bbox", pa.list_(pa.float32(), 4)),
    ("keypoints", pa.list_(pa.float32(), 51)),
    ("num_keypoints", pa.int32()),
    ("area", pa.float32()),
    ("iscrowd", pa.int8()),
])
SHARD_SCHEMA = pa.schema([
    ("image_id", pa.int64()),
    ("file_name", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("image", pa.binary()),
    ("persons", pa.list_(PERSON_TYPE)),
    ("split", pa.string()),
])


def infer_split(annotation_path: str) -> str | None:
    name = annotation_path.rsplit("/", 1)[-1].lower()
    for split in ("train", "val", "test"):
        if split in name:
            return split
    return None


@dataclass
class _PartWriter:
    """Buffers rows and writes numbered part files under a prefix, hashing each file."""

    prefix: Location
    rows_per_file: int
    name_prefix: str = ""  # how the manifest names the files (relative to the split folder)
    on_flush: Callable[[], None] = lambda: None  # e.g. refresh the writer's lease
    rows: list[dict] = field(default_factory=list)
    files: list[dict] = field(default_factory=list)
    total_bytes: int = 0

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.rows_per_file:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        table = pa.Table.from_pylist(self.rows, schema=SHARD_SCHEMA)
        avg = max(1, sum(len(r["image"]) for r in self.rows) // len(self.rows))
        sink = io.BytesIO()
        pq.write_table(
            table, sink, row_group_size=max(1, ROW_GROUP_TARGET_BYTES // avg),
            compression={name: ("none" if name == "image" else "zstd") for name in SHARD_SCHEMA.names},
            use_dictionary=["file_name", "split"],
        )
        data = sink.getvalue()
        name = f"part-{len(self.files):05d}.parquet"
        self.prefix.join(name).write_bytes(data)
        labelled = sum(is_labelled_person(p) for row in self.rows for p in row["persons"])
        self.files.append({"name": self.name_prefix + name, "rows": len(self.rows), "bytes": len(data),
                           "sha256": hashlib.sha256(data).hexdigest(), "labelled_persons": labelled})
        self.total_bytes += len(data)
        self.rows = []
        self.on_flush()


def _person_rows(persons) -> list[dict]:
    return [
        {"ann_id": p.ann_id, "bbox": p.bbox, "keypoints": p.keypoints, "num_keypoints": p.num_keypoints,
         "area": p.area, "iscrowd": p.iscrowd}
        for p in persons
    ]


def ordered_map(fn: Callable[[T], R], items: list[T], workers: int = 8) -> Iterator[R]:
    """fn over items by a bounded pool of threads, results in input order; at most 2 x workers in flight."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _read_and_check(folder: Location, image_dir: str, im) -> tuple[bytes | None, str | None]:
    """(bytes, None) of a complete image of the annotated size, else (None, the problem); runs in the pool."""
    try:
        data = folder.join(im.file_name).read_bytes()
    except FileNotFoundError:
        return None, f"image id={im.image_id}: file '{im.file_name}' not found in {image_dir}"
    problem = image_problem(data, im.width, im.height)  # the decode releases the GIL: checks run in parallel too
    return (None, f"image id={im.image_id}: file '{im.file_name}': {problem}") if problem else (data, None)


def _has_labelled_person(im) -> bool:
    return any(map(is_labelled_person, im.persons))


def _write_parts(coco: CocoKeypointSet, images: Location, image_dir: str, split: str, writer: _PartWriter,
                 skip_bad: bool, show_progress: bool, read_workers: int = 8) -> tuple[list[str], set[int]]:
    """Check and write every image; returns (problems, ids of bad images). Keeps scanning after a bad one.

    Images with a labelled person come first (in the annotation file's order), then the others: so the
    parts training reads hold no image it would skip, and the rest fill parts of their own
    (`labelled_persons` 0 in the manifest) that only readers of every image, such as detection-box
    evaluation, read. COCO's train annotations list every image; about half have no labelled person.
    """
    problems: list[str] = list(coco.problems)
    bad_images: set[int] = set()
    ordered = sorted(coco.images, key=lambda im: not _has_labelled_person(im))
    previous_labelled = True
    reads = ordered_map(lambda im: _read_and_check(images, image_dir, im), ordered, read_workers)
    for im, (data, problem) in tqdm(zip(ordered, reads), total=len(ordered), desc=f"shard {split}",
                                    unit="img", disable=not show_progress):
        if problem:
            problems.append(problem)
            bad_images.add(im.image_id)
            continue
        if bad_images and not skip_bad:
            continue  # keep scanning to report every bad item; nothing will be published
        if previous_labelled and not _has_labelled_person(im):
            writer.flush()  # the images without a labelled person start a part of their own
            previous_labelled = False
        writer.add({"image_id": im.image_id, "file_name": im.file_name, "width": im.width, "height": im.height,
                    "image": data, "persons": _person_rows(im.persons), "split": split})
    writer.flush()
    return problems, bad_images


def _manifest(coco: CocoKeypointSet, split: str, writer: _PartWriter, ann_bytes: bytes, annotation_path: str,
              problems: list[str], version: str) -> dict:
    persons = [p for im in coco.images for p in im.persons]
    return {
        "schema_version": SCHEMA_VERSION, "split": split, "created_unix": time.time(),
        "num_images": len(coco.images), "num_persons": len(persons),
        "num_keypointed_persons": sum(map(is_labelled_person, persons)),
        "num_crowd": sum(1 for p in persons if p.iscrowd),
        "total_bytes": writer.total_bytes, "files": writer.files, "columns": SHARD_SCHEMA.names,
        "version": version, "annotation_file": writer.name_prefix + ANNOTATIONS, "annotation_sha256": hashlib.sha256(ann_bytes).hexdigest(),
        "source_annotation_file": annotation_path, "source_annotation_sha256": coco.source_sha256,
        "skipped_non_person": coco.skipped_non_person, "skipped_bad": len(problems),
        "categories": coco.raw.get("categories", []),
    }


def _load_source(annotation_path: str, image_dir: str, skip_bad: bool, s3_endpoint: str | None
                 ) -> tuple[CocoKeypointSet, Location]:
    source = resolve(annotation_path, s3_endpoint)
    if not source.exists():
        raise DataValidationError("annotation file not found", [annotation_path])
    coco = parse_coco_keypoints(source.read_bytes(), annotation_path, skip_bad=skip_bad)
    images = resolve(image_dir, s3_endpoint)
    if not images.exists():
        raise DataValidationError("image folder not found", [image_dir])
    return coco, images


def shard_coco(annotation_path: str, image_dir: str, out_uri: str, split: str | None = None,
               rows_per_file: int = 1000, skip_bad: bool = False, s3_endpoint: str | None = None,
               show_progress: bool = True, read_workers: int = 8, lease_seconds: float = 600.0) -> dict:
    """Shard a COCO keypoint set into ``out_uri/<split>/`` as a new version; returns the manifest.

    One writer per split (a lease); the previous version stays readable until the new manifest is in
    place, and is removed only then.
    """
    split = split or infer_split(annotation_path)
    if not split:
        raise DataValidationError("cannot tell the split", [f"pass --split for {annotation_path}"])
    check_name(split, "split")
    if rows_per_file < 1:
        raise DataValidationError("bad option", [f"--rows-per-file must be >= 1 (got {rows_per_file})"])
    coco, images = _load_source(annotation_path, image_dir, skip_bad, s3_endpoint)
    split_dir = resolve(out_uri, s3_endpoint).join(split)
    lease = acquire_split_lease(split_dir, lease_seconds)
    try:
        version = VERSION_PREFIX + new_version()
        writer = _PartWriter(split_dir.join(version), rows_per_file, f"{version}/", on_flush=lease.refresh)
        previous = read_pointer(split_dir)
        manifest, problems = _write_version(coco, images, image_dir, split, writer, version, annotation_path,
                                            skip_bad, show_progress, read_workers)
        switch_pointer(split_dir, manifest)
        _remove_superseded(split_dir, previous)
    except BaseException:
        published = read_pointer(split_dir)
        if not (published and version_of(published) == version):
            split_dir.join(version).remove()  # never published: take it away again
        lease.release()
        if not split_dir.listdir_names():
            split_dir.remove()  # a first write that failed leaves no empty split folder
        raise
    lease.release()
    return {**manifest, "problems": problems}


def _write_version(coco: CocoKeypointSet, images: Location, image_dir: str, split: str, writer: _PartWriter,
                   version: str, annotation_path: str, skip_bad: bool, show_progress: bool, read_workers: int
                   ) -> tuple[dict, list[str]]:
    """Every part, the annotation copy and the report of the new version: (its manifest, not yet published; problems)."""
    problems, bad_images = _write_parts(coco, images, image_dir, split, writer, skip_bad, show_progress, read_workers)
    if problems and not skip_bad:
        raise DataValidationError(f"cannot shard {annotation_path}", problems)
    coco.drop_images(bad_images)
    ann_bytes = json.dumps(coco.raw).encode()
    writer.prefix.join(ANNOTATIONS).write_bytes(ann_bytes)
    if problems:
        writer.prefix.join(REPORT).write_bytes(json.dumps({"skipped": problems}, indent=1).encode())
    return _manifest(coco, split, writer, ann_bytes, annotation_path, problems, version), problems


def _remove_superseded(split_dir: Location, previous: dict | None) -> None:
    """The new version is published: remove the old one. A failure here loses nothing (gc finishes it)."""
    try:
        remove_version(split_dir, previous)
    except Exception as exc:  # noqa: BLE001 - the publish succeeded; leftovers are reported by shards-info
        log.warning("published, but the previous version could not be removed (%s); `cdkd-ray shards-gc` "
                    "removes it", exc)


def read_manifest(split_location: Location) -> dict:
    """The manifest of a published split; a clear error when missing or unreadable."""
    path = split_location.join(MANIFEST)
    if not path.exists():
        raise DataValidationError(
            f"no shards at {split_location.uri}", [f"{MANIFEST} is missing (not written by 'cdkd-ray shard', or incomplete)"])
    try:
        manifest = json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise DataValidationError(f"bad manifest at {path.uri}", [str(exc)]) from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise DataValidationError(
            f"unsupported shard schema at {split_location.uri}",
            [f"schema_version {manifest.get('schema_version')!r}, this cdkd-ray reads {SCHEMA_VERSION}"])
    return manifest


def list_splits(root: Location) -> list[str]:
    return [name for name in root.listdir_names()
            if not name.startswith("_") and root.join(name, MANIFEST).exists()]


def holds_no_labelled_person(entry: dict) -> bool:
    """A manifest's part entry counted no labelled person (shards written before the count: False)."""
    return entry.get("labelled_persons") == 0


def shard_parts(root_uri: str, split: str, s3_endpoint: str | None = None,
                labelled_only: bool = False) -> tuple[Location, list[dict]]:
    """The split's location and the manifest entries (name, rows, ...) of the part files to read.

    `labelled_only`: leave out the parts whose images hold no labelled person (readers that make
    instances only of labelled people: training, GT-box evaluation). Shards written before the manifest
    counted them list every part.
    """
    location = resolve(root_uri, s3_endpoint).join(split)
    manifest = read_manifest(location)
    files = [f for f in manifest["files"] if not (labelled_only and holds_no_labelled_person(f))]
    if not files:
        raise DataValidationError(f"nothing to read in {location.uri}",
                                  ["no part holds a labelled person (a person with keypoints, not a crowd)"])
    return location, files


def shard_files(root_uri: str, split: str, s3_endpoint: str | None = None,
                labelled_only: bool = False) -> tuple[Location, list[str]]:
    """The split's location and the full paths of the part files to read (see shard_parts)."""
    location, files = shard_parts(root_uri, split, s3_endpoint, labelled_only)
    return location, [location.join(f["name"]).path for f in files]


def _stream_sha256(part: Location) -> tuple[int, str]:
    """(size, SHA-256) of a file, read once in 8 MiB chunks."""
    h, size = hashlib.sha256(), 0
    with part.fs.open(part.path, "rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _part_problems(location: Location, entry: dict, hashes: bool) -> list[str]:
    """What is wrong with one part file against its manifest entry (size, checksum, rows, columns)."""
    part = location.join(entry["name"])
    if not part.exists():
        return [f"{entry['name']}: missing"]
    if hashes:
        size, digest = _stream_sha256(part)
        if size != entry["bytes"] or digest != entry["sha256"]:
            return [f"{entry['name']}: checksum mismatch (corrupt or modified): {size} bytes, manifest says "
                    f"{entry['bytes']}"]
    try:
        with part.fs.open(part.path, "rb") as f:
            meta = pq.ParquetFile(f).metadata  # the footer only
    except Exception as exc:  # noqa: BLE001 - report any parquet failure as a problem
        return [f"{entry['name']}: unreadable parquet ({exc})"]
    problems = []
    if meta.num_rows != entry["rows"]:
        problems.append(f"{entry['name']}: {meta.num_rows} rows, manifest says {entry['rows']}")
    if meta.schema.to_arrow_schema().names != SHARD_SCHEMA.names:
        problems.append(f"{entry['name']}: columns differ from schema v{SCHEMA_VERSION}")
    return problems


def verify_split(location: Location, manifest: dict, hashes: bool = True, workers: int = 8,
                 hash_unlabelled: bool = True) -> list[str]:
    """Check every part file (in parallel, each read once) and the annotation copy against the manifest.

    `hash_unlabelled=False`: parts without a labelled person (which a reader of labelled people never
    reads) get every check but the checksum, which reads the whole file.
    """
    def problems_of(entry: dict) -> list[str]:
        hashed = hashes and (hash_unlabelled or not holds_no_labelled_person(entry))
        return _part_problems(location, entry, hashed)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        per_part = pool.map(problems_of, manifest["files"])
        problems = [p for found in per_part for p in found]
    ann = location.join(manifest["annotation_file"])
    if not ann.exists():
        problems.append(f"{manifest['annotation_file']}: missing")
    elif hashlib.sha256(ann.read_bytes()).hexdigest() != manifest["annotation_sha256"]:
        problems.append(f"{manifest['annotation_file']}: checksum mismatch")
    if sum(f["rows"] for f in manifest["files"]) != manifest["num_images"]:
        problems.append("row counts of the files do not add up to num_images")
    return problems


def verified_manifests(root_uri: str, splits: tuple[str, ...], s3_endpoint: str | None = None,
                       hashes: bool = True, labelled_only: tuple[str, ...] = ()) -> dict[str, dict]:
    """The manifests of `splits`, after checking every file they list; a DataValidationError names each bad file.

    The splits in `labelled_only` are read for their labelled people only: their other parts are not hashed.
    """
    root = resolve(root_uri, s3_endpoint)
    manifests, problems = {}, []
    for split in splits:
        location = root.join(split)
        manifests[split] = read_manifest(location)
        found = verify_split(location, manifests[split], hashes, hash_unlabelled=split not in labelled_only)
        problems += [f"{location.uri}/{p}" for p in found]
    if problems:
        raise DataValidationError(f"the shards at {root.uri} do not match their manifests (run `cdkd-ray shards-info "
                                  f"{root.uri}`, re-shard the affected split)", problems)
    return manifests


def _split_info(location: Location, manifest: dict, hashes: bool) -> dict:
    problems = verify_split(location, manifest, hashes=hashes)
    keys = ("num_images", "num_persons", "num_keypointed_persons", "num_crowd", "total_bytes", "schema_version",
            "source_annotation_sha256", "skipped_bad")
    counted = all("labelled_persons" in f for f in manifest["files"])  # not in shards written before 2026-12-07
    unlabelled = sum(map(holds_no_labelled_person, manifest["files"])) if counted else None
    return {**{k: manifest[k] for k in keys}, "num_files": len(manifest["files"]),
            "files_without_labelled_person": unlabelled,
            "version": version_of(manifest), "verified": not problems, "problems": problems,
            "leftovers": leftovers(location, manifest), "being_written_by": lease_holder(location)}


def shards_info(root_uri: str, s3_endpoint: str | None = None, hashes: bool = True) -> dict:
    """Counts, schema and checksums for every split under a shard root, verified; leftovers of crashed writers."""
    root = resolve(root_uri, s3_endpoint)
    splits = list_splits(root)
    if not splits:
        raise DataValidationError(f"no shard splits under {root.uri}", ["expected <split>/manifest.json folders"])
    info = {"root": root.uri, "splits": {s: _split_info(root.join(s), read_manifest(root.join(s)), hashes)
                                         for s in splits}}
    info["leftovers"] = root_leftovers(root) + [
        f"{name}/{v}" for name in root.listdir_names() if name not in splits and not name.startswith("_")
        for v in leftovers(root.join(name), None)]
    info["ok"] = all(s["verified"] for s in info["splits"].values())
    return info


def shards_gc(root_uri: str, s3_endpoint: str | None = None, dry_run: bool = False) -> dict:
    """Remove the leftovers shards-info lists (never a published version, never a split being written)."""
    return collect_garbage(resolve(root_uri, s3_endpoint), dry_run)
