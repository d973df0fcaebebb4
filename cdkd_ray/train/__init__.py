"""Training on Ray Train and evaluation (decode, flip test, COCOeval)."""
