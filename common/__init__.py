"""Shared models, loss, data and config for fedkd's ServerApp and ClientApp."""
