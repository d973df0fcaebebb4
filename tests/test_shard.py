import json
import shutil

import pyarrow.parquet as pq
import pytest

from cdkd_ray.core.shards import shard_coco, shards_info
from cdkd_ray.core.storage import resolve
from cdkd_ray.core.evaluation import evaluate_keypoints, gt_as_results
from tests.helpers import last_json, run_cli, split_file, with_unlabelled_images


def read_back(root_uri: str, split: str) -> list[dict]:
    location = resolve(root_uri).join(split)
    manifest = json.loads(location.join("manifest.json").read_bytes())
    rows = []
    for entry in manifest["files"]:
        with location.fs.open(location.join(entry["name"]).path, "rb") as f:
            rows.extend(pq.read_table(f).to_pylist())
    return rows


def assert_same_as_source(rows: list[dict], ann_path, image_dir):
    source = json.loads(open(ann_path).read())
    by_image = {}
    for a in source["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    assert sorted(r["image_id"] for r in rows) == sorted(im["id"] for im in source["images"])
    for row in rows:
        assert row["image"] == (image_dir / row["file_name"]).read_bytes()
        expected = sorted(by_image.get(row["image_id"], []), key=lambda a: a["id"])
        got = sorted(row["persons"], key=lambda p: p["ann_id"])
        assert [p["ann_id"] for p in got] == [a["id"] for a in expected]
        for p, a in zip(got, expected):
            assert p["keypoints"] == pytest.approx(a["keypoints"], abs=1e-3)
            assert p["bbox"] == pytest.approx(a["bbox"], abs=1e-3)
            assert p["num_keypoints"] == a["num_keypoints"] and p["iscrowd"] == a["iscrowd"]


def test_real_coco_mini_round_trip_and_ap(coco_mini, tmp_path):
    ann = coco_mini / "person_keypoints_val_mini.json"
    proc = run_cli("shard", ann, coco_mini / "images", tmp_path / "shards", "--split", "val", "--json", check=True)
    result = last_json(proc)
    assert result["num_images"] == 4 and result["num_persons"] == 14 and result["num_keypointed_persons"] == 12
    assert_same_as_source(read_back(str(tmp_path / "shards"), "val"), ann, coco_mini / "images")
    copy = json.loads(split_file(tmp_path / "shards", "val").read_text())
    assert evaluate_keypoints(copy, gt_as_results(copy))["AP"] == 1.0
    info = last_json(run_cli("shards-info", tmp_path / "shards", "--json", check=True))
    assert info["ok"] and info["splits"]["val"]["num_images"] == 4


def test_s3_round_trip_through_moto(synth_dir, s3_bucket, s3_server):
    ann = synth_dir / "annotations" / "person_keypoints_train.json"
    uri = f"{s3_bucket}/coco"
    manifest = shard_coco(str(ann), str(synth_dir / "train"), uri, split="train", rows_per_file=10,
                          s3_endpoint=s3_server, show_progress=False)
    assert len(manifest["files"]) == 3
    assert_same_as_source(read_back(uri, "train"), ann, synth_dir / "train")
    listing = resolve(uri).listdir_names()
    assert listing == ["train"], listing  # no temporary prefix left behind
    info = shards_info(uri)
    assert info["ok"] and info["splits"]["train"]["num_files"] == 3
    # a re-run replaces, never duplicates: one version folder and the manifest, no lease left
    again = shard_coco(str(ann), str(synth_dir / "train"), uri, split="train", rows_per_file=10, show_progress=False)
    assert len(read_back(uri, "train")) == manifest["num_images"]
    assert again["version"] != manifest["version"]
    assert sorted(resolve(uri).join("train").listdir_names()) == sorted([again["version"], "manifest.json"])


def _bad_copy(coco_mini, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(coco_mini / "images", images)
    ann = json.loads((coco_mini / "person_keypoints_val_mini.json").read_text())
    return images, ann


@pytest.mark.parametrize("breakage, message", [
    ("missing_image", "image id=785: file '000000000785.jpg' not found"),
    ("truncated_image", "image id=785: file '000000000785.jpg': truncated JPEG"),
    ("garbage_image", "image id=785: file '000000000785.jpg': not a JPEG or PNG image"),
    ("bad_keypoints", "annotation id=442619 (image id=785): keypoints must be 17*3"),
    ("unknown_image", "points at unknown image id 4242"),
    ("not_json", "is not valid JSON"),
])
def test_bad_input_fails_cleanly_with_no_output(coco_mini, tmp_path, breakage, message):
    images, ann = _bad_copy(coco_mini, tmp_path)
    target = images / "000000000785.jpg"
    if breakage == "missing_image":
        target.unlink()
    elif breakage == "truncated_image":
        target.write_bytes(target.read_bytes()[:5000])
    elif breakage == "garbage_image":
        target.write_bytes(b"hello, not an image")
    elif breakage == "bad_keypoints":
        ann["annotations"][0]["keypoints"] = ann["annotations"][0]["keypoints"][:-3]
    elif breakage == "unknown_image":
        ann["annotations"][1]["image_id"] = 4242
    ann_path = tmp_path / "ann.json"
    ann_path.write_text("{broken" if breakage == "not_json" else json.dumps(ann))
    out = tmp_path / "out"
    proc = run_cli("shard", ann_path, images, out, "--split", "val")
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not out.exists() or list(out.iterdir()) == []


def test_skip_bad_writes_the_good_ones_and_a_report(coco_mini, tmp_path):
    images, ann = _bad_copy(coco_mini, tmp_path)
    (images / "000000000785.jpg").write_bytes(b"junk")
    ann["annotations"][3]["bbox"] = [1, 2]
    ann_path = tmp_path / "ann.json"
    ann_path.write_text(json.dumps(ann))
    out = tmp_path / "out"
    result = last_json(run_cli("shard", ann_path, images, out, "--split", "val", "--skip-bad", "--json", check=True))
    assert result["num_images"] == 3 and result["skipped_bad"] == 2
    report = json.loads((split_file(out, "val").parent / "skipped_report.json").read_text())["skipped"]
    assert any("image id=785" in r for r in report) and any("bbox" in r for r in report)
    rows = read_back(str(out), "val")
    assert 785 not in {r["image_id"] for r in rows}
    copy = json.loads(split_file(out, "val").read_text())
    assert 785 not in {im["id"] for im in copy["images"]}
    assert evaluate_keypoints(copy, gt_as_results(copy))["AP"] == 1.0


def test_shards_info_detects_corruption(synth_dir, tmp_path):
    shard_coco(str(synth_dir / "annotations" / "person_keypoints_val.json"), str(synth_dir / "val"),
               str(tmp_path), split="val", show_progress=False)
    part = split_file(tmp_path, "val", "part")
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    proc = run_cli("shards-info", tmp_path)
    assert proc.returncode == 1 and "checksum mismatch" in proc.stdout


def test_every_command_has_help():
    for command in ("quickstart", "synth", "shard", "shards-info", "codec-check", "show", "model-info", "export",
                    "train-teacher", "distill", "sweep", "serve"):
        proc = run_cli(command, "--help")
        assert proc.returncode == 0 and "usage: cdkd-ray " + command in proc.stdout


@pytest.mark.parametrize("orientation", [6, 3])  # 90 degrees (swaps the displayed sides), 180 degrees
def test_exif_orientation_is_ignored_by_the_check_and_the_decoder_alike(tmp_path, orientation):
    import io

    import numpy as np
    from PIL import Image

    from cdkd_ray.core.coco.images import decode_bgr, image_problem

    pixels = np.zeros((60, 80, 3), np.uint8)
    pixels[:10, :20] = 255  # a white block at the top left of the stored frame
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    data = buf.getvalue()
    assert image_problem(data, 80, 60) is None  # the annotation's frame is the stored one
    decoded = decode_bgr(data)
    assert decoded.shape == (60, 80, 3)
    assert decoded[:10, :20].mean() > 200 and decoded[-10:, -20:].mean() < 50  # not rotated


def test_images_without_a_labelled_person_get_parts_of_their_own_that_training_does_not_read(coco_mini, tmp_path):
    """COCO's train annotations list every image, about half with no labelled person: those are kept (nothing
    is lost; detection-box evaluation reads them) but written after the others, into parts training skips."""
    from cdkd_ray.core.shard_reader import iter_shard_rows
    from cdkd_ray.core.shards import shard_files

    ann = with_unlabelled_images(coco_mini, tmp_path)
    source = json.loads(ann.read_text())

    manifest = shard_coco(str(ann), str(coco_mini / "images"), str(tmp_path / "shards"), split="train",
                          rows_per_file=2, show_progress=False)

    rows = read_back(str(tmp_path / "shards"), "train")
    assert_same_as_source(rows, ann, coco_mini / "images")  # every image kept, as it was
    assert [r["image_id"] for r in rows] == [im["id"] for im in source["images"] if im["id"] < 900000] + [900001, 900002]
    assert [f["labelled_persons"] for f in manifest["files"]] == [3, 9, 0]
    _, every_part = shard_files(str(tmp_path / "shards"), "train")
    _, read_for_training = shard_files(str(tmp_path / "shards"), "train", labelled_only=True)
    assert len(every_part) == 3 and read_for_training == every_part[:2]
    ids = [i for block in iter_shard_rows(str(tmp_path / "shards"), "train", 8, labelled_only=True)
           for i in block["image_id"]]
    assert sorted(ids) == sorted(im["id"] for im in source["images"] if im["id"] < 900000)
    assert shards_info(str(tmp_path / "shards"))["splits"]["train"]["files_without_labelled_person"] == 1
    # 3 a part: the 4th labelled image ends its part early rather than share it with the two without one
    manifest3 = shard_coco(str(ann), str(coco_mini / "images"), str(tmp_path / "shards3"), split="train",
                           rows_per_file=3, show_progress=False)
    assert [(f["rows"], f["labelled_persons"] > 0) for f in manifest3["files"]] == [(3, True), (1, True), (2, False)]
    shown = run_cli("shards-info", tmp_path / "shards", check=True).stdout
    assert "1 file(s) hold only images without a labelled person" in shown
    # a run reading labelled people only does not hash the parts it will not read (every other check holds)
    from cdkd_ray.core.errors import DataValidationError
    from cdkd_ray.core.shards import verified_manifests

    unread = resolve(every_part[2])
    data = bytearray(unread.read_bytes())
    data[len(data) // 2] ^= 0xFF
    unread.write_bytes(bytes(data))
    assert verified_manifests(str(tmp_path / "shards"), ("train",), labelled_only=("train",))["train"]
    with pytest.raises(DataValidationError, match="checksum mismatch"):
        verified_manifests(str(tmp_path / "shards"), ("train",))

    manifest_file = resolve(str(tmp_path / "shards")).join("train").join("manifest.json")
    older = json.loads(manifest_file.read_bytes())
    for entry in older["files"]:
        del entry["labelled_persons"]  # as written before the files counted them
    manifest_file.write_bytes(json.dumps(older).encode())
    assert len(shard_files(str(tmp_path / "shards"), "train", labelled_only=True)[1]) == 3  # read whole
    assert shards_info(str(tmp_path / "shards"), hashes=False)["splits"]["train"]["files_without_labelled_person"] is None
    assert "read whole" in run_cli("shards-info", tmp_path / "shards", "--quick", check=True).stdout
