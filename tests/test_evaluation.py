import json

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cdkd_ray.core.data_config import DataConfig
from cdkd_ray.core.codec_check import codec_check
from cdkd_ray.core.evaluation import evaluate_keypoints, oks_nms, predictions_to_results, rescore
from tests.helpers import last_json, run_cli

DETS = "person_detection_results_AP_H_56.json"


def perturbed_results(doc, seed=0):
    rng = np.random.default_rng(seed)
    results = []
    for a in doc["annotations"]:
        if a["num_keypoints"] == 0:
            continue
        k = np.asarray(a["keypoints"], float).reshape(17, 3)
        k[:, :2] += rng.normal(0, 6, (17, 2))
        k[:, 2] = rng.uniform(0.3, 1, 17)
        results.append({"image_id": a["image_id"], "category_id": 1, "keypoints": k.reshape(-1).tolist(),
                        "score": float(rng.uniform(0.5, 1))})
    return results


def test_our_ap_equals_pycocotools(coco_mini, tmp_path):
    ann = coco_mini / "person_keypoints_val_mini.json"
    doc = json.loads(ann.read_text())
    results = perturbed_results(doc)
    (tmp_path / "res.json").write_text(json.dumps(results))
    gt = COCO(str(ann))
    ev = COCOeval(gt, gt.loadRes(str(tmp_path / "res.json")), "keypoints")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    ours = evaluate_keypoints(doc, results)
    assert 0.2 < ours["AP"] < 0.99
    assert [ours[k] for k in ("AP", "AP50", "AP75", "APm", "APl", "AR")] == list(ev.stats[:6])


def test_rescore_and_oks_nms():
    scores = rescore(np.array([[0.9, 0.1, 0.5], [0.1, 0.1, 0.1]]), np.array([0.5, 1.0]))
    assert np.allclose(scores, [0.5 * 0.7, 0.0])
    pose = np.random.default_rng(0).uniform(0, 100, (17, 3))
    near = pose.copy()
    near[:, :2] += 0.5
    far = pose.copy()
    far[:, :2] += 60
    kpts = np.stack([pose, near, far])
    keep = oks_nms(kpts, np.array([0.5, 0.9, 0.7]), np.full(3, 5000.0), 0.9, np.full(17, 0.08))
    assert keep == [1, 2]


def test_predictions_to_results_drops_duplicates_per_image():
    k = np.random.default_rng(1).uniform(0, 100, (1, 17, 2))
    kp = np.concatenate([k, k, k])
    res = predictions_to_results(kp, np.ones((3, 17)) * 0.9, np.array([1, 1, 2]), np.array([1.0, 0.5, 1.0]),
                                 np.full(3, 5000.0))
    assert [r["image_id"] for r in res] == [1, 2] and res[0]["score"] == 0.9


def test_codec_ceiling_on_real_images_both_protocols(coco_mini, tmp_path):
    run_cli("shard", coco_mini / "person_keypoints_val_mini.json", coco_mini / "images", tmp_path, "--split", "val",
            check=True)
    gt_boxes = last_json(run_cli("codec-check", tmp_path, "--input-size", "256x192", "--heatmap-size", "64x48",
                                 "--json", check=True))
    assert gt_boxes["instances"] == 12 and gt_boxes["stats"]["AP"] >= 0.95
    detected = codec_check(str(tmp_path), "val", DataConfig(), boxes_file=str(coco_mini / DETS), show_progress=False)
    assert detected["instances"] == 118 and detected["stats"]["AP"] >= 0.95
    coarse = codec_check(str(tmp_path), "val", DataConfig(input_size=(128, 96), heatmap_size=(32, 24), sigma=1.0),
                         show_progress=False)
    assert coarse["stats"]["AP"] < gt_boxes["stats"]["AP"]  # the ceiling falls with the resolution


def test_show_writes_a_grid(synth_shards, tmp_path):
    import cv2

    out = tmp_path / "grid.png"
    result = last_json(run_cli("show", synth_shards, "--split", "train", "-n", "6", "--out", out, "--json", check=True))
    image = cv2.imread(str(out))
    assert result["instances"] == 6 and image.shape[1] > 6 * 192 and image.std() > 10
