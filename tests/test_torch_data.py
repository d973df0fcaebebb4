"""Shards as a plain PyTorch dataset (what torchrun + DataLoader users run): one item per labelled person."""

from __future__ import annotations

import json

import torch

from cdkd_ray.core.config import load_config
from cdkd_ray.core.experiment import ExperimentConfig
from cdkd_ray.core.keypoints import is_labelled_person
from cdkd_ray.core.torch_data import InstanceDataset


def test_instance_dataset_has_every_labelled_person_and_loads_with_a_shuffling_dataloader(synth_dir, synth_shards):
    cfg = load_config(ExperimentConfig, "tiny")
    dataset = InstanceDataset(synth_shards, "train", cfg.data)
    annotations = json.load(open(synth_dir / "annotations" / "person_keypoints_train.json"))["annotations"]
    assert len(dataset) == sum(is_labelled_person(a) for a in annotations)
    item = dataset[0]
    h, w = cfg.data.input_size
    assert item["image"].shape == (3, h, w) and item["image"].dtype == torch.uint8
    assert item["joints"].shape == (17, 3) and item["joints"].dtype == torch.float32
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(0))
    epochs = [[tuple(b["image_id"].tolist()) for b in loader] for _ in range(2)]
    assert epochs[0] != epochs[1] and len(epochs[0]) == len(dataset) // 4
    dataset.set_epoch(1)  # the augmentation is reseeded by epoch
    assert not torch.equal(dataset[0]["image"], item["image"]) or not torch.equal(dataset[0]["joints"], item["joints"])
