"""fedkd's ServerApp: the run config's reading, the strategies (server_app/strategies/), the round loop that
runs them over the Grid, and the run's outputs (history, summary, models, checkpoints)."""
