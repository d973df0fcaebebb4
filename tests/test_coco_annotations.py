import json
import math

import pytest

from cdkd_ray.core.coco.annotations import parse_coco_keypoints
from cdkd_ray.core.keypoints import FLIP_PAIRS, KEYPOINT_NAMES, OKS_SIGMAS, flip_index, person_category
from cdkd_ray.core.errors import DataValidationError


def doc(images=None, annotations=None, categories=None) -> dict:
    return {
        "images": images if images is not None else [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
        "annotations": annotations if annotations is not None else [ann(7)],
        "categories": categories if categories is not None else [person_category()],
    }


def ann(ann_id, image_id=1, **kw) -> dict:
    base = {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": [1, 1, 5, 5],
            "keypoints": [2, 2, 2] * 17, "num_keypoints": 17, "iscrowd": 0, "area": 25}
    base.update(kw)
    return base


def parse(d) -> object:
    return parse_coco_keypoints(json.dumps(d).encode(), "test.json")


def test_metadata_matches_pycocotools():
    from pycocotools.cocoeval import Params

    assert len(KEYPOINT_NAMES) == 17
    assert OKS_SIGMAS == pytest.approx(Params(iouType="keypoints").kpt_oks_sigmas)
    perm = flip_index()
    assert all(perm[a] == b and perm[b] == a for a, b in FLIP_PAIRS)
    assert (perm[perm] == range(17)).all()
    for a, b in FLIP_PAIRS:
        assert KEYPOINT_NAMES[a].replace("left", "right") == KEYPOINT_NAMES[b]


def test_valid_file_parses_and_counts_non_person():
    d = doc(annotations=[ann(7), ann(8, category_id=3)],
            categories=[person_category(), {"id": 3, "name": "car"}])
    coco = parse(d)
    assert coco.num_persons == 1 and coco.skipped_non_person == 1
    assert coco.images[0].persons[0].keypoints[:3] == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["annotations"][0].pop("bbox"), "annotation id=7 (image id=1): missing field(s) bbox"),
    (lambda d: d["annotations"][0].update(keypoints=[1] * 50), "annotation id=7 (image id=1): keypoints must be 17*3"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "annotation id=7 (image id=1): bbox is not 4 finite"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, math.nan, 4]), "annotation id=7 (image id=1): bbox is not 4 finite"),
    (lambda d: d["annotations"][0].update(image_id=99), "annotation id=7 (image id=99): points at unknown image id 99"),
    (lambda d: d["annotations"].append(ann(7)), "annotation id=7 (image id=1): duplicate annotation id"),
    (lambda d: d["images"].append(dict(d["images"][0])), "image id=1: duplicate image id"),
    (lambda d: d["images"][0].pop("width"), "image id=1: missing field(s) width"),
    (lambda d: d["annotations"][0].update(keypoints=[1, 1, 5] * 17), "visibility flags must be 0, 1 or 2"),
    # wrong types are listed as problems with their ids, never a TypeError
    (lambda d: d["annotations"][0].update(category_id=[1]), "annotation id=7 (image id=1): category_id is not an integer"),
    (lambda d: d["annotations"][0].update(image_id=[1]), "annotation id=7 (image id=[1]): image_id is not an integer"),
    (lambda d: d["annotations"][0].update(area="big"), "annotation id=7 (image id=1): area is not a non-negative number"),
])
def test_invalid_entries_are_named(mutate, expected):
    d = doc()
    mutate(d)
    with pytest.raises(DataValidationError) as info:
        parse(d)
    assert expected in str(info.value)


def test_every_problem_is_reported_and_skip_bad_keeps_the_good():
    d = doc(annotations=[ann(7), ann(8, bbox=[0, 0]), ann(9, image_id=5), ann(10)])
    with pytest.raises(DataValidationError) as info:
        parse(d)
    assert len(info.value.problems) == 2
    coco = parse_coco_keypoints(json.dumps(d).encode(), "t.json", skip_bad=True)
    assert [p.ann_id for p in coco.images[0].persons] == [7, 10]
    assert len(coco.problems) == 2
    assert [a["id"] for a in coco.raw["annotations"]] == [7, 10]


@pytest.mark.parametrize("text, expected", [
    (b"{not json", "is not valid JSON"),
    (b"[]", "top level is not an object"),
    (b'{"images": []}', "missing or non-list top-level key 'annotations'"),
])
def test_not_a_coco_file(text, expected):
    with pytest.raises(DataValidationError) as info:
        parse_coco_keypoints(text, "x.json")
    assert expected in str(info.value)


def test_missing_area_and_num_keypoints_are_derived_for_cocoeval():
    from cdkd_ray.core.evaluation import evaluate_keypoints, gt_as_results

    bare = ann(7, keypoints=[2, 2, 2] * 5 + [0, 0, 0] * 12)
    del bare["area"], bare["num_keypoints"]
    coco = parse(doc(annotations=[bare]))
    person = coco.images[0].persons[0]
    assert person.num_keypoints == 5 and person.area == 25.0
    assert coco.raw["annotations"][0]["num_keypoints"] == 5 and coco.raw["annotations"][0]["area"] == 25.0
    # the copy kept beside the shards is what COCOeval reads: it must score, not raise KeyError
    assert evaluate_keypoints(coco.raw, gt_as_results(coco.raw))["AP"] == pytest.approx(1.0)
