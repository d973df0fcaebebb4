"""SimpleBaseline pose ResNets, checkpoint import/export."""
