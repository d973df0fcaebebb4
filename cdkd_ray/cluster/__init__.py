"""A local autoscaling Ray cluster for laptops and tests."""
