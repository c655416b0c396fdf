"""fedkd's ServerApp: the two-stage strategy, its round loop and the run's outputs."""
