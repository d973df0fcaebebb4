"""Ray Tune sweeps over the CDKD hyperparameters."""
