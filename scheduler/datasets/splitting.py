"""A seeded, deterministic train/test split for logs that come without one."""
from __future__ import annotations

import hashlib

from scheduler.datasets.records import Split

DEFAULT_TEST_FRACTION = 0.3
DEFAULT_SPLIT_SEED = 0


def hashed_split(record_id: str, *, test_fraction: float = DEFAULT_TEST_FRACTION,
                 seed: int = DEFAULT_SPLIT_SEED) -> Split:
    """``test`` iff sha256(f"{seed}:{id}") read as a number in [0, 1) is below ``test_fraction``.

    Hashing the id (rather than shuffling rows) keeps each record's split the same on every
    platform and Python version, whatever the row order or however many rows are added.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return Split.TEST if u < test_fraction else Split.TRAIN
