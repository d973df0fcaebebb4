import numpy as np
import pytest
import torch

from bench.data_pipeline import reference_target
from cdkd_ray.core.data_config import DataConfig
from cdkd_ray.core.keypoints import FLIP_PAIRS
from cdkd_ray.core.codec import crop_to_image, decode_heatmaps, flip_back, heatmap_to_input
from cdkd_ray.core.targets import encode_heatmaps
from cdkd_ray.core.augment import flip_joints_order, half_body_center_scale
from cdkd_ray.core.geometry import apply_affine, box_to_center_scale, crop_affine

IN, HM = (256, 192), (64, 48)


def random_people(rng, n=64):
    boxes = np.stack([rng.uniform(0, 300, n), rng.uniform(0, 300, n), rng.uniform(40, 200, n), rng.uniform(80, 300, n)], 1)
    joints = boxes[:, None, :2] + rng.uniform(0.05, 0.95, (n, 17, 2)) * boxes[:, None, 2:]
    return boxes.astype(np.float32), joints.astype(np.float32)


def encode(joints, visible, input_size, heatmap_size, sigma, subpixel=False):
    """The core's torch targets from numpy joints [N,K,2] and flags [N,K], as numpy."""
    stacked = np.concatenate([joints, np.asarray(visible, np.float32)[..., None]], -1).astype(np.float32)
    return tuple(t.numpy() for t in encode_heatmaps(torch.from_numpy(stacked), input_size, heatmap_size, sigma, subpixel))


def round_trip(joints, boxes, method, subpixel, sigma=2.0):
    center, scale = box_to_center_scale(boxes, IN[1] / IN[0])
    mat = crop_affine(center, scale, np.zeros(len(boxes)), IN)
    crop = apply_affine(joints, mat)
    target, weight = encode(crop, np.ones(crop.shape[:2]), IN, HM, sigma, subpixel)
    coords, _ = decode_heatmaps(target, method)
    back = crop_to_image(heatmap_to_input(coords, IN, HM), center, scale, IN)
    # error measured in input-crop pixels
    err_input = np.linalg.norm(apply_affine(back, mat) - crop, axis=-1)
    return err_input, weight


def test_round_trip_subpixel_dark_within_half_pixel():
    boxes, joints = random_people(np.random.default_rng(0))
    err, weight = round_trip(joints, boxes, "dark", subpixel=True)
    assert weight.all()
    assert err.max() < 0.5, err.max()


def test_round_trip_argmax_within_quantisation():
    boxes, joints = random_people(np.random.default_rng(1))
    err, _ = round_trip(joints, boxes, "argmax", subpixel=False)
    stride = IN[0] / HM[0]
    # nearest-pixel encoding + quarter offset: at most half a heatmap pixel per axis (+0.25 shift)
    assert err.max() <= stride * 0.75 * np.sqrt(2) + 1e-3
    assert err.mean() < stride * 0.5


def test_targets_peak_one_and_weights_zero_off_map():
    joints = np.array([[[10.0, 20.0], [-40.0, 5.0], [100.0, 300.0], [50.0, 60.0]]], np.float32)
    vis = np.array([[2, 2, 2, 0]])
    target, weight = encode(joints, vis, IN, HM, 2.0)
    assert weight.tolist() == [[1, 0, 0, 0]]
    assert target[0, 0].max() == pytest.approx(1.0)
    assert np.unravel_index(target[0, 0].argmax(), HM) == (5, 3)  # (20/4, 10/4 rounded half up)
    assert target[0, 1:].max() == 0


@pytest.mark.parametrize("sigma,input_size", [(2.0, (256, 192)), (1.0, (128, 96)), (3.0, (384, 288))])  # 3 sigma whole, as SimpleBaseline needs
def test_targets_equal_simplebaselines_keypoint_by_keypoint_rendering(sigma, input_size):
    """The step's dense rendering is SimpleBaseline's: a 3-sigma window at the nearest pixel, cut at the edges."""
    cfg = DataConfig(input_size=input_size, heatmap_size=(input_size[0] // 4, input_size[1] // 4), sigma=sigma)
    rng = np.random.default_rng(3)
    n, (h, w) = 24, input_size
    # left of and above the crop SimpleBaseline's int() rounds towards zero where we round half up: not compared
    joints = np.concatenate([rng.uniform(0, 1.3, (n, 17, 2)) * [w, h], rng.integers(0, 3, (n, 17, 1))], -1)
    target, weight = encode(joints[..., :2], joints[..., 2], input_size, cfg.heatmap_size, sigma)
    identity = np.array([[1, 0, 0], [0, 1, 0]], np.float32)  # the joints are in crop pixels already
    reference = np.stack([reference_target(j.astype(np.float32), identity, cfg) for j in joints])
    np.testing.assert_allclose(target, reference, atol=1e-6)
    assert (weight == (reference.reshape(n, 17, -1).max(-1) > 0)).all()
    assert 0 < weight.mean() < 1  # some joints unlabelled or off the map, most not


def test_flip_twice_is_identity_and_pairs_swap():
    rng = np.random.default_rng(2)
    hm = rng.random((3, 17, 8, 6)).astype(np.float32)
    assert np.array_equal(flip_back(flip_back(hm, shift=False), shift=False), hm)
    once = flip_back(hm, shift=False)
    for a, b in FLIP_PAIRS:
        assert np.array_equal(once[:, a], hm[:, b, :, ::-1])
    joints = rng.random((4, 17, 3))
    flips = np.array([True, False, True, True])
    twice = flip_joints_order(flip_joints_order(joints, flips), flips)
    assert np.array_equal(twice, joints)
    swapped = flip_joints_order(joints, flips)
    assert np.array_equal(swapped[0, 5], joints[0, 6]) and np.array_equal(swapped[1], joints[1])


def test_flip_back_matches_torch():
    import torch

    hm = np.random.default_rng(3).random((2, 17, 8, 6)).astype(np.float32)
    assert np.allclose(flip_back(torch.from_numpy(hm)).numpy(), flip_back(hm))


def test_flipped_crop_mirrors_points():
    boxes, joints = random_people(np.random.default_rng(4), 8)
    center, scale = box_to_center_scale(boxes, 0.75)
    rot = np.zeros(8)
    plain = apply_affine(joints, crop_affine(center, scale, rot, IN))
    mirrored = apply_affine(joints, crop_affine(center, scale, rot, IN, np.ones(8, bool)))
    assert np.allclose(mirrored[..., 0], IN[1] - 1 - plain[..., 0], atol=1e-4)
    assert np.allclose(mirrored[..., 1], plain[..., 1], atol=1e-4)


def test_box_to_center_scale_fixes_aspect_and_pads():
    center, scale = box_to_center_scale(np.array([[10, 20, 30, 100], [0, 0, 200, 50]], np.float32), 0.75)
    assert center.tolist() == [[25, 70], [100, 25]]
    assert np.allclose(scale, [[75 * 1.25, 100 * 1.25], [200 * 1.25, 200 / 0.75 * 1.25]])


def test_half_body_crop_contains_the_chosen_joints():
    rng = np.random.default_rng(5)
    boxes, xy = random_people(rng, 200)
    joints = np.concatenate([xy, np.full((200, 17, 1), 2.0, np.float32)], -1)
    joints[:20, :, 2] = 0  # too few visible joints: never half-body
    joints[:20, :5, 2] = 2
    center, scale, applied = half_body_center_scale(joints, np.ones(200, bool), rng, 0.75)
    assert not applied[:20].any() and applied[20:].all()
    mat = crop_affine(center[applied], scale[applied], np.zeros(applied.sum()), IN)
    inside_crop = apply_affine(joints[applied, :, :2], mat)
    inside = (inside_crop[..., 0] >= 0) & (inside_crop[..., 0] <= IN[1]) & (inside_crop[..., 1] >= 0) & (inside_crop[..., 1] <= IN[0])
    upper_in = inside[:, :11].all(1)
    lower_in = inside[:, 11:].all(1)
    assert (upper_in | lower_in).all()  # the chosen half is fully inside the crop
    assert not (upper_in & lower_in).all()  # and it really is a half-body crop for most


def _gaussian_maps(h: int, w: int, xs: np.ndarray, y: float, sigma: float = 2.0) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((xx[None] - xs[:, None, None]) ** 2 + (yy[None] - y) ** 2) / (2 * sigma ** 2))[:, None]


@pytest.mark.parametrize("size", [(64, 48), (32, 24)])
def test_dark_is_at_least_as_accurate_as_argmax_at_every_distance_from_the_border(size):
    h, w = size
    for distance in range(w // 2):
        for side in ("left", "right"):
            offsets = np.linspace(0.0, 0.9, 10)
            xs = distance + offsets if side == "left" else (w - 1 - distance) - offsets
            maps = _gaussian_maps(h, w, xs, h / 2 + 0.3).astype(np.float32)
            err = {m: np.abs(decode_heatmaps(maps, m)[0][:, 0, 0] - xs) for m in ("argmax", "dark")}
            assert err["dark"].mean() <= err["argmax"].mean() + 1e-6, (size, distance, side, err)
            assert err["dark"].max() <= err["argmax"].max() + 1e-6, (size, distance, side, err)


def test_dark_near_the_border_is_not_pulled_by_a_mirrored_peak():
    # an exact sigma-2 Gaussian centred at x=2 (the border reflection used to decode it at 1.00)
    maps = _gaussian_maps(64, 48, np.array([2.0]), 30.0).astype(np.float32)
    coords, _ = decode_heatmaps(maps, "dark")
    assert coords[0, 0] == pytest.approx([2.0, 30.0], abs=0.02)
