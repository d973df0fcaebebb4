"""Storage, transforms, heatmap targets and the Ray Data input pipeline."""
