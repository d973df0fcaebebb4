"""End-to-end Ray Train runs on tiny synthetic data (2 workers, a few steps each)."""

import json
import os
import shutil
import signal
import threading
import time

import pytest
import torch

from cdkd_ray.core.config import load_config
from cdkd_ray.core.models.pose_resnet import ModelConfig, PoseResNet
from cdkd_ray.core.experiment import ExperimentConfig, RunKind
from cdkd_ray.ray_adapters.train_driver import run_training
from tests.helpers import processes_mentioning, reports_to_file, truncate_first_image

pytestmark = pytest.mark.timeout(420)


def tiny(*overrides) -> ExperimentConfig:
    return load_config(ExperimentConfig, "tiny", list(overrides))


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> str:
    """A ResNet-18 teacher in the original SimpleBaseline layout (random weights: the mechanics are under test)."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.manual_seed(1)
    torch.save({"state_dict": PoseResNet(ModelConfig(arch="resnet18")).state_dict()}, path)
    return str(path)


def history(run_dir) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]


def _kill_rank1_mid_epoch_1(run_dir, pid_dir, killed: dict) -> threading.Thread:
    """A thread that SIGKILLs train worker rank 1 a second after the run's first checkpoint appears."""
    def killer():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            checkpoints = list(run_dir.glob("checkpoint_epoch*")) if run_dir.exists() else []
            pid_file = pid_dir / "rank1.pid"
            if checkpoints and pid_file.exists():
                time.sleep(1.0)  # mid-epoch 1
                pid = int(pid_file.read_text())
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
            time.sleep(0.2)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    return thread


def _forget_last_checkpoint(run_dir: str) -> str:
    """Ray Train's record of a run as if it stopped after uploading its last checkpoint but before recording
    it: the checkpoint stays in the run folder, the record ends one checkpoint earlier. Its name."""
    path = os.path.join(run_dir, "checkpoint_manager_snapshot.json")
    record = json.load(open(path))
    last = record["latest_checkpoint_result"]["checkpoint_dir_name"]
    kept = [(r, i) for r, i in zip(record["checkpoint_results"], record["checkpoint_report_indices"])
            if r["checkpoint_dir_name"] != last]
    record["checkpoint_results"], record["checkpoint_report_indices"] = [r for r, _ in kept], [i for _, i in kept]
    record["latest_checkpoint_result"] = max(kept, key=lambda item: item[1])[0]
    record["current_report_index"] -= 1
    with open(path, "w") as f:
        json.dump(record, f)
    return last


def test_distill_with_pool_survives_a_killed_worker_then_resumes_with_outputs(ray_session, synth_shards, teacher_file,
                                                                              tmp_path):
    """One run shows the teacher pool, recovery from a killed worker (no epoch lost or repeated) and --resume."""
    storage, pid_dir, killed = tmp_path / "runs", tmp_path / "pids", {}
    pid_dir.mkdir()
    thread = _kill_rank1_mid_epoch_1(storage / "cdkd-a", pid_dir, killed)
    teachers_before = _actors_created("TeacherStage")["TeacherStage"]
    first = run_training(tiny("teacher.placement=pool", "train.max_steps_per_epoch=6"), RunKind.CDKD, synth_shards,
                         str(storage), "cdkd-a", teacher_checkpoint=teacher_file, pid_dir=str(pid_dir))
    thread.join(timeout=5)
    assert killed, "the worker was never killed"
    assert int((pid_dir / "rank1.pid").read_text()) != killed["pid"]  # a new worker took over
    assert first["epochs"] == 2 and first["kind"] == "cdkd" and first["teacher_placement"] == "pool"
    # the persistent teacher actor (pool_max=1) served both epochs and the restarted worker group, then went
    assert _actors_created("TeacherStage")["TeacherStage"] - teachers_before == 1
    assert _wait_for_no_process("ray::TeacherStage"), "the run's teacher actor outlived the run"
    rows = history(first["run_dir"])
    assert [r["epoch"] for r in rows] == [0, 1]  # nothing lost, nothing repeated
    for r in rows:
        assert {"loss", "loss_gt", "loss_inter", "loss_final", "AP", "AP50", "AR", "lr", "data_digest"} <= r.keys()
        assert 2 <= r["steps"] <= 6 and r["loss"] > r["loss_gt"] > 0
        assert r["bad_images_skipped"] == 0
    run_dir = first["run_dir"]
    assert not os.path.exists(os.path.join(run_dir, "bad_images"))  # nothing skipped, nothing recorded
    assert os.path.getsize(os.path.join(run_dir, "curves.png")) > 5000
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(run_dir, "tensorboard")))
    assert json.load(open(os.path.join(run_dir, "summary.json")))["best_checkpoint"] == first["best_checkpoint"]
    # the same command with more epochs resumes from the last checkpoint instead of restarting, even one Ray
    # Train had not recorded: a Ctrl-C between an epoch's upload and its record once made a sweep train it again
    assert _forget_last_checkpoint(run_dir) == "checkpoint_epoch0001"
    # and part of a later one, as an upload cut off leaves it (Ray copies the small trainer state first):
    # nothing can resume from it, so the resume removes it rather than leave it in the run folder for good
    partial = os.path.join(run_dir, "checkpoint_epoch0003")
    os.makedirs(partial)
    shutil.copy(os.path.join(run_dir, "checkpoint_epoch0001", "trainer_state.json"), partial)
    second = run_training(tiny("train.epochs=3", "train.max_steps_per_epoch=6"), RunKind.CDKD, synth_shards,
                          str(storage), "cdkd-a", teacher_checkpoint=teacher_file)
    resumed = history(second["run_dir"])
    assert second["teacher_placement"] == "worker"  # the default, auto, keeps the teacher in the worker on CPUs
    assert [r["epoch"] for r in resumed] == [0, 1, 2]
    assert not os.path.exists(partial)
    assert resumed[:2] == rows  # restored history, nothing re-run (a retrained epoch has other times and losses)
    assert rows[0]["data_digest"] != rows[1]["data_digest"]  # each epoch is augmented and shuffled afresh
    # a finished run resumed again trains nothing but says its last epoch again: a sweep stopped after a trial's
    # last report reached Train but before Tune recorded it once showed a trial that trained 3 epochs as stopped at 2
    reports = tmp_path / "reports.jsonl"
    third = run_training(tiny("train.epochs=3", "train.max_steps_per_epoch=6"), RunKind.CDKD, synth_shards,
                         str(storage), "cdkd-a", teacher_checkpoint=teacher_file, callbacks=[reports_to_file(reports)])
    said = [json.loads(line) for line in reports.read_text().splitlines()]
    assert history(third["run_dir"]) == resumed and len(said) == 1
    assert said[0]["epochs_done"] == 3 and said[0]["loss"] == resumed[-1]["loss"]
    assert said[0]["checkpoint_path"] == third["latest_checkpoint"] and third["latest_checkpoint"].endswith("0002")
    # (that a baseline sees the same batches as CDKD for the same seed is checked by the compare study's test)


def test_persistent_teachers_label_each_batch_in_order_across_actors_as_one_teacher_would(ray_session,
                                                                                          teacher_file):
    """A worker's batches, each split into teacher calls over two actors, come back whole and in order, as from
    one teacher; the calls for the next batches go out before the first batch comes back."""
    import numpy as np

    from cdkd_ray.ray_adapters.pipeline import TeacherStage
    from cdkd_ray.ray_adapters.teacher_servers import labelled_batches, start_teacher_servers, stop_teacher_servers

    cfg = tiny("teacher.placement=pool", "teacher.pool_max=2", "teacher.batch_size=4")
    rng = np.random.default_rng(0)
    batches = [{"image": torch.from_numpy(rng.integers(0, 256, (n, 3, 128, 96), dtype=np.uint8)),
                "image_id": torch.arange(n) + 100 * i} for i, n in enumerate((10, 6, 0, 9))]
    drawn = []

    def drawing():
        for batch in batches:
            drawn.append(batch)
            yield batch

    actors = start_teacher_servers(cfg, teacher_file)
    try:
        stream = labelled_batches(drawing(), actors, cfg.teacher.batch_size, 60.0, ahead=2)
        first = next(stream)
        assert len(drawn) == 3  # the first batch's calls and the next two went out before it came back
        labelled = [first, *stream]
    finally:
        stop_teacher_servers(actors)
    alone = TeacherStage(teacher_file, cfg.distill.teacher_tap, num_threads=1)
    assert len(labelled) == 4
    for batch, got in zip(batches, labelled):
        assert got["image_id"].tolist() == batch["image_id"].tolist()
        want = alone.label(batch["image"].numpy())
        assert got["teacher_heatmaps"].dtype == torch.float16 and len(got["teacher_heatmaps"]) == len(batch["image"])
        np.testing.assert_allclose(got["teacher_heatmaps"].float().numpy(), want["teacher_heatmaps"].astype(np.float32),
                                   atol=2e-3)
        assert got["teacher_features"].shape == want["teacher_features"].shape


def test_teacher_actors_that_cannot_read_the_checkpoint_fail_the_batch_with_a_readable_error(ray_session, tmp_path):
    """A checkpoint the driver read but an actor's node cannot (a path only on the head) is named, not a raw actor death."""
    import numpy as np

    from cdkd_ray.core.errors import CdkdError
    from cdkd_ray.ray_adapters.teacher_servers import labelled_batches, start_teacher_servers, stop_teacher_servers

    actors = start_teacher_servers(tiny("teacher.placement=pool"), str(tmp_path / "only-on-the-head.pth"))
    batch = {"image": torch.from_numpy(np.zeros((2, 3, 128, 96), np.uint8))}
    try:
        with pytest.raises(CdkdError, match=r"no teacher actor could load the teacher.*readable from every node"):
            next(labelled_batches(iter([batch]), actors, 4, 60.0))
    finally:
        stop_teacher_servers(actors)


def test_distill_from_s3_shards_to_s3_storage_skips_and_counts_an_undecodable_image(ray_session, synth_dir, s3_bucket,
                                                                                     teacher_file):
    from cdkd_ray.apps.recipes import shard_coco_dir
    from cdkd_ray.core.storage import resolve

    data = shard_coco_dir(str(synth_dir), f"{s3_bucket}/coco", rows_per_file=10)
    _, bad_id = truncate_first_image(data, "train")
    helpers_before = _actors_created("SplitCoordinator", "PreemptionWatcher", "TeacherStage")
    # the teacher as Ray Data's own actor-pool stage (the persistent pool is the killed-worker test's)
    summary = run_training(tiny("train.epochs=1", "teacher.placement=pool", "teacher.persistent=false",
                                "train.max_steps_per_epoch=null",
                                "data.verify_shards=false", "data.on_bad_image=skip", "train.num_workers=1"),
                           RunKind.CDKD, data, f"{s3_bucket}/runs", "cdkd-s3", teacher_checkpoint=teacher_file)
    # a lone worker streams its data itself, and the embedded Ray (one node, never drained) watches no preemption;
    # Ray Data's pool runs the teacher in its own map workers, not in persistent TeacherStage actors
    assert _actors_created("SplitCoordinator", "PreemptionWatcher", "TeacherStage") == helpers_before
    assert summary["teacher_placement"] == "pool"
    assert summary["best_checkpoint"].startswith(f"{s3_bucket}/runs/cdkd-s3/checkpoint_epoch0000")
    run = resolve(f"{s3_bucket}/runs/cdkd-s3")
    assert {"metrics.jsonl", "curves.png", "summary.json", "tensorboard"} <= set(run.listdir_names())
    assert "model.pt" in resolve(summary["best_checkpoint"]).listdir_names()
    assert summary["bad_images_skipped"] == 1  # distinct images skipped: the truncated one
    metrics = [json.loads(line) for line in run.join("metrics.jsonl").read_bytes().decode().splitlines()]
    assert metrics[-1]["bad_images_skipped"] == 1
    assert run.join("bad_images").listdir_names() == [str(bad_id)]  # which image, kept with the run


def _actors_created(*class_names: str) -> dict[str, int]:
    """How many actors of each class this Ray has created so far, alive or dead."""
    import ray
    from ray.util.state import list_actors

    here = ray.get_runtime_context().gcs_address  # not "the" cluster on record in /tmp/ray: another test's, gone
    return {name: len(list_actors(address=here, filters=[("class_name", "=", name)], limit=10_000,
                                  raise_on_missing_output=False)) for name in class_names}


def _wait_for_no_process(text: str, timeout: float = 15.0) -> bool:
    deadline = time.time() + timeout
    while processes_mentioning(text):
        if time.time() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_the_resource_watch_interrupts_a_run_waiting_longer_than_its_limit():
    """What waits too long is named and the driver interrupted (Ray Train then aborts the run gracefully,
    which took 45-300 s here, too slow for the suite; the detection is tested with a fake cluster)."""
    from cdkd_ray.ray_adapters.resource_watch import ResourceWatch

    calls = []

    def pending():
        calls.append(1)
        new = {"pg:abc": "placement group [{CPU: 64}] (INFEASIBLE)"} if len(calls) > 1 else {}
        return {"pg:old": "placement group [{GPU: 8}] (INFEASIBLE)", **new}  # pending before the run: ignored

    watch = ResourceWatch(0.3, poll_s=0.05, pending=pending)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # an earlier Train run may have set its own
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            with watch:
                time.sleep(30)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - started < 10  # a main thread blocked in a sleep is woken, not left to finish it
    assert watch.missing == ["placement group [{CPU: 64}] (INFEASIBLE)"]
    idle = ResourceWatch(0.3, poll_s=0.05, pending=lambda: {})
    with idle:
        time.sleep(0.6)
    assert idle.missing == []


def test_auto_teacher_placement_follows_the_clusters_gpus():
    from cdkd_ray.core.experiment import resolve_teacher_placement

    cpu = tiny()
    assert resolve_teacher_placement(cpu, 0)[0] == "worker"
    gpu_pool = tiny("teacher.num_gpus=0.5", "train.use_gpu=true", "train.num_workers=2")
    assert resolve_teacher_placement(gpu_pool, 4)[0] == "pool"  # 2 GPUs to spare for a 0.5-GPU pool actor
    placement, why = resolve_teacher_placement(gpu_pool, 2)  # the workers take every GPU
    assert placement == "worker" and "no GPUs to spare" in why
    assert resolve_teacher_placement(tiny("teacher.placement=pool"), 0) == ("pool", "teacher.placement=pool in the config")
