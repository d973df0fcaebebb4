"""The Ray-free pose core: codec, geometry, augmentation, COCO, models, losses, evaluation, training step."""
