"""Deployment tooling: certificates, SuperNode keys, and a one-machine launcher."""
