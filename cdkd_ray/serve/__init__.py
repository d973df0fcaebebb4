"""Ray Serve: the exported student as an autoscaling, batching HTTP endpoint."""
