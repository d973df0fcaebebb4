"""SimpleBaseline pose ResNets: building, loading external checkpoints, inference, export, costs."""
