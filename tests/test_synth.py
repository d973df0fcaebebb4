import json

import numpy as np

from cdkd_ray.core.coco.annotations import parse_coco_keypoints
from cdkd_ray.core.coco.images import image_problem
from cdkd_ray.core.coco.synth import render_image
from cdkd_ray.core.evaluation import evaluate_keypoints, gt_as_results


def test_deterministic_for_a_seed():
    a = render_image(5, "train", 3)
    b = render_image(5, "train", 3)
    c = render_image(6, "train", 3)
    assert a[0] == b[0] and a[2] == b[2]
    assert a[0] != c[0]


def test_synthetic_set_is_valid_coco_with_consistent_visibility(synth_dir):
    for split in ("train", "val"):
        path = synth_dir / "annotations" / f"person_keypoints_{split}.json"
        coco = parse_coco_keypoints(path.read_bytes(), str(path))  # raises on any invalid entry
        for im in coco.images:
            assert image_problem((synth_dir / split / im.file_name).read_bytes(), im.width, im.height) is None
            for p in im.persons:
                k = np.asarray(p.keypoints).reshape(17, 3)
                labelled = k[:, 2] > 0
                assert p.num_keypoints == labelled.sum()
                assert (k[~labelled, :2] == 0).all()
                inside = (k[labelled, 0] >= 0) & (k[labelled, 0] < im.width) & (k[labelled, 1] >= 0) & (k[labelled, 1] < im.height)
                assert inside.all()


def test_variety_people_crowds_occlusion():
    people, crowd, occluded, hidden_face, sizes = [], 0, 0, 0, []
    for i in range(60):
        _, entry, anns = render_image(11, "train", i)
        kp = [a for a in anns if a["num_keypoints"] > 0]
        people.append(len(kp))
        crowd += sum(a["iscrowd"] for a in anns)
        for a in kp:
            v = np.asarray(a["keypoints"]).reshape(17, 3)[:, 2]
            occluded += int((v == 1).sum())
            hidden_face += int((v[:5] == 0).sum())
            sizes.append(a["bbox"][3] / entry["height"])
    assert set(people) >= {1, 2, 3}
    assert crowd >= 3 and occluded > 20 and hidden_face > 10
    assert min(sizes) < 0.35 and max(sizes) > 0.8


def test_ground_truth_as_results_scores_ap_one(synth_dir):
    doc = json.loads((synth_dir / "annotations" / "person_keypoints_val.json").read_text())
    stats = evaluate_keypoints(doc, gt_as_results(doc))
    assert stats["AP"] == 1.0 and stats["AR"] == 1.0

