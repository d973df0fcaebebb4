"""Ray Serve: the pose endpoint, its deployment and a bounded load test."""
