"""COCO person-keypoint annotation files, images and the synthetic generator."""
