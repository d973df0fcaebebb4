"""Writing COCO keypoint data as Parquet shards (one row per image) to a folder or s3://.

Layout: ``ROOT/<split>/part-00000.parquet ... + annotations.json + manifest.json``. A split is
written under a temporary prefix and published only when complete; the manifest, written last,
lists every part file with its row count and SHA-256, and readers trust only what it lists.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from cdkd_ray.core.coco.annotations import CocoKeypointSet, parse_coco_keypoints
from cdkd_ray.core.coco.images import image_problem
from cdkd_ray.core.storage import Location, resolve
from cdkd_ray.core.errors import DataValidationError
from cdkd_ray.core.keypoints import is_labelled_person

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
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
        self.files.append({"name": name, "rows": len(self.rows), "bytes": len(data),
                           "sha256": hashlib.sha256(data).hexdigest()})
        self.total_bytes += len(data)
        self.rows = []


def _person_rows(persons) -> list[dict]:
    return [
        {"ann_id": p.ann_id, "bbox": p.bbox, "keypoints": p.keypoints, "num_keypoints": p.num_keypoints,
         "area": p.area, "iscrowd": p.iscrowd}
        for p in persons
    ]


def _write_parts(coco: CocoKeypointSet, images: Location, image_dir: str, split: str, writer: _PartWriter,
                 skip_bad: bool, show_progress: bool) -> tuple[list[str], set[int]]:
    """Check and write every image; returns (problems, ids of bad images). Keeps scanning after a bad one."""
    problems: list[str] = list(coco.problems)
    bad_images: set[int] = set()
    for im in tqdm(coco.images, desc=f"shard {split}", unit="img", disable=not show_progress):
        try:
            data = images.join(im.file_name).read_bytes()
        except FileNotFoundError:
            problems.append(f"image id={im.image_id}: file '{im.file_name}' not found in {image_dir}")
            bad_images.add(im.image_id)
            continue
        problem = image_problem(data, im.width, im.height)
        if problem:
            problems.append(f"image id={im.image_id}: file '{im.file_name}': {problem}")
            bad_images.add(im.image_id)
            continue
        if bad_images and not skip_bad:
            continue  # keep scanning to report every bad item; nothing will be published
        writer.add({"image_id": im.image_id, "file_name": im.file_name, "width": im.width, "height": im.height,
                    "image": data, "persons": _person_rows(im.persons), "split": split})
    writer.flush()
    return problems, bad_images


def _manifest(coco: CocoKeypointSet, split: str, writer: _PartWriter, ann_bytes: bytes, annotation_path: str,
              problems: list[str]) -> dict:
    persons = [p for im in coco.images for p in im.persons]
    return {
        "schema_version": SCHEMA_VERSION, "split": split, "created_unix": time.time(),
        "num_images": len(coco.images), "num_persons": len(persons),
        "num_keypointed_persons": sum(map(is_labelled_person, persons)),
        "num_crowd": sum(1 for p in persons if p.iscrowd),
        "total_bytes": writer.total_bytes, "files": writer.files, "columns": SHARD_SCHEMA.names,
        "annotation_file": ANNOTATIONS, "annotation_sha256": hashlib.sha256(ann_bytes).hexdigest(),
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
               show_progress: bool = True) -> dict:
    """Shard a COCO keypoint set into ``out_uri/<split>/``; returns the manifest."""
    split = split or infer_split(annotation_path)
    if not split:
        raise DataValidationError("cannot tell the split", [f"pass --split for {annotation_path}"])
    if rows_per_file < 1:
        raise DataValidationError("bad option", [f"--rows-per-file must be >= 1 (got {rows_per_file})"])
    coco, images = _load_source(annotation_path, image_dir, skip_bad, s3_endpoint)
    root = resolve(out_uri, s3_endpoint)
    tmp = root.join(f"_tmp-{split}-{uuid.uuid4().hex[:10]}")
    writer = _PartWriter(tmp, rows_per_file)
    try:
        problems, bad_images = _write_parts(coco, images, image_dir, split, writer, skip_bad, show_progress)
        if problems and not skip_bad:
            raise DataValidationError(f"cannot shard {annotation_path}", problems)
        coco.drop_images(bad_images)
        ann_bytes = json.dumps(coco.raw).encode()
        tmp.join(ANNOTATIONS).write_bytes(ann_bytes)
        if problems:
            tmp.join(REPORT).write_bytes(json.dumps({"skipped": problems}, indent=1).encode())
        manifest = _manifest(coco, split, writer, ann_bytes, annotation_path, problems)
        _publish(tmp, root.join(split), manifest)
    except BaseException:
        tmp.remove()
        raise
    manifest["problems"] = problems
    return manifest


def _publish(tmp: Location, final: Location, manifest: dict) -> None:
    """Replace ``final`` by the complete ``tmp`` prefix; the manifest goes last."""
    final.remove()
    if final.is_remote:
        for name in tmp.listdir_names():
            tmp.fs.mv(tmp.join(name).path, final.join(name).path)
        tmp.remove()
    else:
        import os

        os.replace(tmp.path, final.path)
    final.join(MANIFEST).write_bytes(json.dumps(manifest, indent=1).encode())
    final.invalidate()


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


def shard_files(root_uri: str, split: str, s3_endpoint: str | None = None) -> tuple[Location, list[str]]:
    """The split's location and the full paths of the part files its manifest lists."""
    location = resolve(root_uri, s3_endpoint).join(split)
    manifest = read_manifest(location)
    return location, [location.join(f["name"]).path for f in manifest["files"]]


def verify_split(location: Location, manifest: dict, hashes: bool = True) -> list[str]:
    """Check every part file against the manifest; returns the problems found."""
    problems = []
    for entry in manifest["files"]:
        part = location.join(entry["name"])
        if not part.exists():
            problems.append(f"{entry['name']}: missing")
            continue
        data = part.read_bytes() if hashes else None
        if hashes:
            if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
                problems.append(f"{entry['name']}: checksum mismatch (corrupt or modified)")
                continue
            try:
                meta = pq.ParquetFile(pa.BufferReader(data)).metadata
            except Exception as exc:  # noqa: BLE001 - report any parquet failure as a problem
                problems.append(f"{entry['name']}: unreadable parquet ({exc})")
                continue
        else:
            with part.fs.open(part.path, "rb") as f:
                try:
                    meta = pq.ParquetFile(f).metadata
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"{entry['name']}: unreadable parquet ({exc})")
                    continue
        if meta.num_rows != entry["rows"]:
            problems.append(f"{entry['name']}: {meta.num_rows} rows, manifest says {entry['rows']}")
        if meta.schema.to_arrow_schema().names != SHARD_SCHEMA.names:
            problems.append(f"{entry['name']}: columns differ from schema v{SCHEMA_VERSION}")
    ann = location.join(manifest["annotation_file"])
    if not ann.exists():
        problems.append(f"{manifest['annotation_file']}: missing")
    elif hashlib.sha256(ann.read_bytes()).hexdigest() != manifest["annotation_sha256"]:
        problems.append(f"{manifest['annotation_file']}: checksum mismatch")
    if sum(f["rows"] for f in manifest["files"]) != manifest["num_images"]:
        problems.append("row counts of the files do not add up to num_images")
    return problems


def shards_info(root_uri: str, s3_endpoint: str | None = None, hashes: bool = True) -> dict:
    """Counts, schema and checksums for every split under a shard root, verified."""
    root = resolve(root_uri, s3_endpoint)
    splits = list_splits(root)
    if not splits:
        raise DataValidationError(f"no shard splits under {root.uri}", ["expected <split>/manifest.json folders"])
    info = {"root": root.uri, "splits": {}}
    for split in splits:
        location = root.join(split)
        manifest = read_manifest(location)
        problems = verify_split(location, manifest, hashes=hashes)
        info["splits"][split] = {
            "num_images": manifest["num_images"],
            "num_persons": manifest["num_persons"],
            "num_keypointed_persons": manifest["num_keypointed_persons"],
            "num_crowd": manifest["num_crowd"],
            "num_files": len(manifest["files"]),
            "total_bytes": manifest["total_bytes"],
            "schema_version": manifest["schema_version"],
            "source_annotation_sha256": manifest["source_annotation_sha256"],
            "skipped_bad": manifest["skipped_bad"],
            "verified": not problems,
            "problems": problems,
        }
    info["ok"] = all(s["verified"] for s in info["splits"].values())
    return info
