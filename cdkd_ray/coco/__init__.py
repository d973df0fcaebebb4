"""COCO person-keypoint data: constants, reading and validation, synthetic data, sharding."""
