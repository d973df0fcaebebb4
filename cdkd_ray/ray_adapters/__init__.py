"""Thin Ray adapters over the core: Ray Data pipeline, Train worker and driver, Tune, Serve, local cluster."""
