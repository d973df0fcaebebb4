import json

import numpy as np
import pytest
import torch

from cdkd_ray.core.config import from_dict
from cdkd_ray.core.data_config import DataConfig
from cdkd_ray.core.codec import decode_heatmaps, heatmap_to_input
from cdkd_ray.core.losses import CDKDLoss, DistillConfig, DistillStudent
from cdkd_ray.core.teacher import Teacher
from cdkd_ray.core.errors import ConfigError
from cdkd_ray.core.models.loading import CheckpointError, load_pose_model
from cdkd_ray.core.models.export import export_student
from cdkd_ray.core.models.pose_resnet import ARCHS, ModelConfig, PoseResNet, count_flops, count_parameters
from cdkd_ray.core.checkpoint import save_checkpoint
from tests.helpers import last_json, run_cli

R18_PARAMS = 15_376_721


@pytest.mark.parametrize("arch", ARCHS)
def test_output_shapes_every_depth(arch):
    model = PoseResNet(ModelConfig(arch=arch)).eval()
    with torch.no_grad():
        heatmaps, feats = model(torch.zeros(1, 3, 256, 192), ("layer4", "deconv3"))
        small = model(torch.zeros(2, 3, 128, 96))
    assert heatmaps.shape == (1, 17, 64, 48) and small.shape == (2, 17, 32, 24)
    expansion = 1 if arch in ("resnet18", "resnet34") else 4
    assert feats["layer4"].shape == (1, 512 * expansion, 8, 6) and feats["deconv3"].shape == (1, 256, 64, 48)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_backbone_matches_torchvision_names_shapes_and_outputs(arch):
    """torchvision's ImageNet state_dicts (and so SimpleBaseline checkpoints) load strictly and compute the same."""
    import torchvision

    from cdkd_ray.core.models.resnet import ResNetBackbone

    reference = getattr(torchvision.models, arch)(weights=None).eval()
    ours = ResNetBackbone(arch).eval()
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in state.items()}
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        want = reference.layer4(reference.layer3(reference.layer2(reference.layer1(
            reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))))))
        got = ours.layer4(ours.layer3(ours.layer2(ours.layer1(ours.maxpool(ours.relu(ours.bn1(ours.conv1(x))))))))
    assert torch.allclose(got, want, atol=1e-5)
    conv = ours.layer2[0].conv1.weight  # torchvision's kaiming-normal (fan_out) initialisation
    assert conv.std().item() == pytest.approx((2 / (conv.shape[0] * conv.shape[2] * conv.shape[3])) ** 0.5, rel=0.1)


def test_building_a_pose_model_does_not_import_torchvision():
    import subprocess
    import sys

    code = ("import sys; from cdkd_ray.core.models.pose_resnet import PoseResNet; PoseResNet(); "
            "assert 'torchvision' not in sys.modules, 'torchvision was imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_inputs_must_be_multiples_of_32():
    with pytest.raises(ConfigError, match="multiples of 32"):
        from_dict(DataConfig, {"input_size": [64, 48], "heatmap_size": [16, 12]})
    with pytest.raises(ConfigError, match="input_size / 4"):
        from_dict(DataConfig, {"input_size": [256, 192], "heatmap_size": [32, 24]})


def _layout(state: dict, layout: str) -> dict:
    head = ("deconv_layers.", "final_layer.")
    if layout == "simplebaseline":
        return {f"module.{k}": v for k, v in state.items()}
    prefix = {"mmpose1": "head.", "mmpose0": "keypoint_head."}[layout]
    out = {(prefix + k if k.startswith(head) else "backbone." + k): v for k, v in state.items()}
    return {"state_dict": out, "meta": {"epoch": 210}}


@pytest.mark.parametrize("layout, arch, order", [
    ("simplebaseline", "resnet18", "BGR"), ("mmpose1", "resnet50", "RGB"), ("mmpose0", "resnet34", "RGB"),
])
def test_external_layouts_load(tmp_path, layout, arch, order):
    torch.manual_seed(0)
    source = PoseResNet(ModelConfig(arch=arch)).eval()
    path = tmp_path / "teacher.pth"
    torch.save(_layout(source.state_dict(), layout), path)
    loaded = load_pose_model(str(path))
    assert (loaded.layout, loaded.model_cfg.arch, loaded.channel_order) == (layout, arch, order)
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(x), source(x))


def test_bad_external_checkpoints_are_named(tmp_path):
    state = PoseResNet(ModelConfig(arch="resnet18")).state_dict()
    state.pop("layer2.0.conv1.weight")
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing key\(s\) \['layer2.0.conv1.weight'\]"):
        load_pose_model(str(tmp_path / "missing.pth"))
    torch.save({"foo.weight": torch.zeros(1)}, tmp_path / "alien.pth")
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        load_pose_model(str(tmp_path / "alien.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_pose_model(str(tmp_path / "junk.pth"))


def _cdkd_checkpoint(tmp_path, distill=True):
    torch.manual_seed(0)
    cfg = DistillConfig(dropout_p=0.3)
    module = DistillStudent(PoseResNet(ModelConfig()), CDKDLoss(cfg, "resnet18", "resnet50") if distill else None)
    ckpt = tmp_path / "ckpt"
    save_checkpoint(str(ckpt), module.state_dict(), None, {
        "epoch": 3, "metrics": {"AP": 0.5}, "config": {"data": {"input_size": [128, 96], "heatmap_size": [32, 24]},
                                                      "model": {"channel_order": "RGB"}}})
    return module, ckpt


def test_exported_student_has_exactly_the_baseline_cost(tmp_path):
    module, ckpt = _cdkd_checkpoint(tmp_path)
    assert count_parameters(module) > R18_PARAMS  # the align module is there while training
    result = last_json(run_cli("export", ckpt, "--out", tmp_path / "export", "--json", check=True))
    baseline = PoseResNet(ModelConfig())
    assert result["parameters"] == count_parameters(baseline) == R18_PARAMS
    assert result["flops"] == count_flops(baseline, (128, 96))
    card = json.loads((tmp_path / "export" / "model_card.json").read_text())
    assert card["input_size"] == [128, 96] and card["channel_order"] == "RGB" and card["metrics"]["AP"] == 0.5
    loaded = load_pose_model(str(tmp_path / "export"))
    assert count_parameters(loaded.model) == R18_PARAMS
    assert all(torch.equal(v, module.student.state_dict()[k]) for k, v in loaded.model.state_dict().items())


def test_only_student_and_align_learn_teacher_frozen(tmp_path):
    teacher_file = tmp_path / "teacher.pth"
    torch.save(PoseResNet(ModelConfig(arch="resnet34")).state_dict(), teacher_file)
    teacher = Teacher(str(teacher_file), tap="layer4")
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    module = DistillStudent(PoseResNet(ModelConfig()), CDKDLoss(DistillConfig(), "resnet18", "resnet34")).train()
    opt = torch.optim.Adam(module.parameters(), 1e-3)
    images = torch.randint(0, 255, (4, 3, 128, 96), dtype=torch.uint8)
    t_hm, t_feat = teacher.infer(images)
    assert t_hm.dtype == torch.float16 and not t_hm.requires_grad
    from cdkd_ray.core.models.inference import normalize_images

    loss, terms, _ = module(normalize_images(images), torch.rand(4, 17, 32, 24), torch.ones(4, 17), t_hm, t_feat)
    loss.backward()
    assert all(p.grad is not None for p in module.student.parameters())
    assert all(p.grad is not None for p in module.distill.feature_align.parameters())
    assert all(p.grad is None and not p.requires_grad for p in teacher.model.parameters())
    opt.step()
    assert not teacher.model.training
    assert all(torch.equal(v, before[k]) for k, v in teacher.model.state_dict().items())
    assert {"loss_gt", "loss_inter", "loss_final"} <= terms.keys()


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_channel_dropout_rate_in_training_and_identity_in_eval(p):
    loss = CDKDLoss(DistillConfig(dropout_p=p), "resnet18", "resnet50")
    x = torch.ones(64, 512, 2, 2)
    dropped = loss.train().drop_channels(x)
    per_sample = (dropped[:, :, 0, 0] == 0).float().mean(1)
    assert torch.allclose(per_sample, torch.full((64,), p), atol=0.08)
    assert ((dropped == 0) | (dropped == 1 / (1 - p))).all()  # whole channels, Dropout2d rescaling
    assert (dropped == 0).all(dim=(2, 3)).eq((dropped == 0).any(dim=(2, 3))).all()
    assert torch.equal(loss.eval().drop_channels(x), x)
    masked = CDKDLoss(DistillConfig(dropout_p=p, dropout_mode="masked_generation"), "resnet18", "resnet50")
    out = masked.train().drop_channels(x)
    assert ((out == 0) | (out == 1)).all() and masked.feature_align.generator is not None


def test_loss_weights_decay_and_plain_baseline():
    cdkd = CDKDLoss(DistillConfig(alpha=2.0, beta=1.0, decay=True), "resnet18", "resnet50")
    assert cdkd.weights(0.0) == (2.0, 1.0) and cdkd.weights(0.5) == (1.0, 0.5) and cdkd.weights(1.0) == (0.0, 0.0)
    student = DistillStudent(PoseResNet(ModelConfig()), None)
    loss, terms, heatmaps = student(torch.randn(2, 3, 128, 96), torch.zeros(2, 17, 32, 24), torch.ones(2, 17))
    assert set(terms) == {"loss_gt", "loss"} and heatmaps.shape == (2, 17, 32, 24)


def test_onnx_matches_torch(tmp_path):
    import onnxruntime as ort

    module, ckpt = _cdkd_checkpoint(tmp_path, distill=False)
    export_student(str(ckpt), str(tmp_path / "plain"), onnx=True)
    export_student(str(ckpt), str(tmp_path / "decode"), onnx=True, onnx_decode=True)
    x = torch.randn(3, 3, 128, 96)
    student = module.student.eval()
    with torch.no_grad():
        expected = student(x).numpy()
    heatmaps = ort.InferenceSession(str(tmp_path / "plain" / "student.onnx")).run(None, {"image": x.numpy()})[0]
    assert heatmaps.shape == expected.shape and np.abs(heatmaps - expected).max() < 1e-4
    keypoints, scores = ort.InferenceSession(str(tmp_path / "decode" / "student.onnx")).run(None, {"image": x.numpy()})
    coords, maxvals = decode_heatmaps(expected)
    assert np.abs(keypoints - heatmap_to_input(coords, (128, 96), (32, 24))).max() < 1e-3
    assert np.abs(scores - maxvals).max() < 1e-4


def test_export_refuses_a_folder_that_is_not_an_earlier_export(tmp_path):
    from tests.helpers import random_student_export

    export = random_student_export(str(tmp_path))
    run_dir = tmp_path / "runs" / "cdkd"
    (run_dir / "checkpoint_epoch0001").mkdir(parents=True)
    (run_dir / "summary.json").write_text("{}")
    for target in (run_dir, tmp_path):  # a run folder, and `--out .` with everything in it
        proc = run_cli("export", tmp_path / "ckpt", "--out", target)
        assert proc.returncode == 2 and "not an earlier student export" in proc.stderr
    assert (run_dir / "summary.json").exists() and (run_dir / "checkpoint_epoch0001").is_dir()
    before = (tmp_path / "export" / "student.pt").stat().st_mtime_ns
    proc = run_cli("export", tmp_path / "ckpt", "--out", export, "--json")  # an earlier export is replaced
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "export" / "student.pt").stat().st_mtime_ns != before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".export")) == []


def test_an_unrecorded_checkpoint_is_found_only_whole_and_past_the_recorded_epoch(tmp_path):
    """A run stopped between writing an epoch's checkpoint and Ray Train recording it leaves that checkpoint
    in the run folder: the resume takes the newest whole one past the recorded epoch and passes over (and
    names, for removal) the partly written ones above it: a truncated model, no optimizer, a trainer state
    alone (Ray copies a checkpoint's files in parallel, the small state first), a state of another epoch."""
    from cdkd_ray.core.checkpoint import UnrecordedCheckpoints, load_checkpoint, unrecorded_checkpoints
    from cdkd_ray.core.storage import resolve

    model = {"w": torch.arange(6.0)}
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1).state_dict()
    for epoch in range(6):
        save_checkpoint(str(tmp_path / f"checkpoint_epoch{epoch:04d}"), {"w": model["w"] + epoch}, optimizer,
                        {"epoch": epoch, "step": 2 * epoch, "metrics": {"epoch": epoch}, "history": []})
    whole = (tmp_path / "checkpoint_epoch0002" / "model.pt").read_bytes()
    (tmp_path / "checkpoint_epoch0004" / "model.pt").write_bytes(whole[: len(whole) // 2])  # upload cut off
    (tmp_path / "checkpoint_epoch0003" / "optimizer.pt").unlink()
    for name in ("model.pt", "optimizer.pt"):
        (tmp_path / "checkpoint_epoch0005" / name).unlink()
    (tmp_path / "summary.json").write_text("{}")
    run_dir = resolve(str(tmp_path))
    found = unrecorded_checkpoints(run_dir, after_epoch=0)
    assert found.newest.name == "checkpoint_epoch0002" and found.newest.state["epoch"] == 2
    assert torch.equal(found.newest.model["w"], model["w"] + 2) and found.newest.files["model.pt"] == whole
    assert found.incomplete == ("checkpoint_epoch0005", "checkpoint_epoch0004", "checkpoint_epoch0003")
    above = unrecorded_checkpoints(run_dir, after_epoch=2)  # nothing whole past the record: all three named
    assert above.newest is None and above.incomplete == found.incomplete
    assert unrecorded_checkpoints(run_dir, after_epoch=-1).newest.name == "checkpoint_epoch0002"
    assert unrecorded_checkpoints(run_dir, after_epoch=5) == UnrecordedCheckpoints(None, ())
    (tmp_path / "checkpoint_epoch0002" / "trainer_state.json").write_text('{"epoch": 1, "step": 2, "history": []}')
    found = unrecorded_checkpoints(run_dir, after_epoch=0)
    assert found.newest.name == "checkpoint_epoch0001" and found.incomplete[-1] == "checkpoint_epoch0002"
    with pytest.raises(CheckpointError, match=r"checkpoint_epoch0004/model.pt cannot be read .*incomplete or corrupt"):
        load_checkpoint(str(tmp_path / "checkpoint_epoch0004"))
