"""Derive independent, reproducible seeds from the run's `seed`."""

import numpy as np


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for the stream named by `keys` under the run's `seed`."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint64)[0] >> 1)
