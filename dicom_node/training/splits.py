"""Splits by patient: a scan, case or patient is never cut between train and val."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def split_groups(groups: Sequence[str], *, val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, val) group names: a seeded permutation of the sorted names, the first part to val.

    At least one group goes to each side when there are two or more.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be in (0, 1)")
    names = sorted(set(groups))
    if len(names) < 2:
        raise ValueError("splitting by patient needs at least two scans or cases")
    order = np.random.default_rng(seed).permutation(len(names))
    n_val = min(max(1, math.ceil(val_fraction * len(names))), len(names) - 1)
    val = sorted(names[i] for i in order[:n_val])
    train = sorted(names[i] for i in order[n_val:])
    return train, val
