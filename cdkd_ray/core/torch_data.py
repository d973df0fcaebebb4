"""Shards as a plain PyTorch map-style dataset: one item per labelled person, for DataLoader and torchrun.

What a user would write without Ray (mmpose and SimpleBaseline do it this way): the index lists every
person, a DataLoader with shuffle=True (or a DistributedSampler) draws them independently each epoch, and
each item decodes its image and crops that person with the same code the Ray pipeline runs
(`build_instances`). The encoded images are held in memory: meant for benchmarks and small sets.
"""

from __future__ import annotations

import numpy as np
import torch

from cdkd_ray.core.data_config import DataConfig
from cdkd_ray.core.instances import build_instances
from cdkd_ray.core.keypoints import is_labelled_person
from cdkd_ray.core.shard_reader import iter_shard_rows

ROW_KEYS = ("image_id", "image", "persons", "width", "height")


class InstanceDataset(torch.utils.data.Dataset):
    """Person instances of one split of the shards; `set_epoch` reseeds the augmentation."""

    def __init__(self, uri: str, split: str, cfg: DataConfig, train: bool = True, s3_endpoint: str | None = None):
        self.cfg, self.train, self.epoch = cfg, train, 0
        self.images: list[dict] = []
        for block in iter_shard_rows(uri, split, 64, s3_endpoint, labelled_only=True):
            self.images += [dict(zip(ROW_KEYS, values)) for values in zip(*(block[k] for k in ROW_KEYS))]
        self.items = [(i, k) for i, image in enumerate(self.images)
                      for k, person in enumerate(image["persons"]) if is_labelled_person(person)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        for offset in range(len(self.items)):  # a person clipped away entirely yields nothing: take the next
            image_index, person = self.items[(index + offset) % len(self.items)]
            image = self.images[image_index]
            rows = {key: [image[key]] for key in ROW_KEYS}
            rows["persons"] = [[image["persons"][person]]]
            instances = build_instances(rows, self.cfg, self.train, self.epoch)
            if len(instances["image"]):
                return {key: torch.from_numpy(np.ascontiguousarray(value[0])) for key, value in instances.items()}
        raise IndexError("no person of this split yields a training instance")
