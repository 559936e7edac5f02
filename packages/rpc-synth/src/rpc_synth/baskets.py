"""What goes on a checkout tray: RPC's level ranges and the sampling of a basket."""

from __future__ import annotations

import numpy as np

# level -> ((min categories, max categories), (min instances, max instances)), as in RPC.
LEVEL_RANGES: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "easy": ((3, 5), (3, 10)),
    "medium": ((5, 8), (10, 15)),
    "hard": ((8, 10), (15, 20)),
}


def parse_ranges(text: str) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """Parse ``"easy=3-5/3-10,hard=8-10/15-20"`` (categories/instances per level) over the RPC defaults."""
    ranges = dict(LEVEL_RANGES)
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            name, spec = part.split("=")
            cats, inst = (tuple(int(v) for v in r.split("-")) for r in spec.split("/"))
            if len(cats) != 2 or len(inst) != 2 or not (1 <= cats[0] <= cats[1] and 1 <= inst[0] <= inst[1]):
                raise ValueError
            if cats[0] > inst[1]:
                raise ValueError
        except ValueError:
            raise ValueError(f"ranges entry {part!r} should look like 'easy=3-5/3-10' (categories/instances)") from None
        ranges[name.strip()] = (cats, inst)
    return ranges


def sample_basket(
    level: str, category_ids: list[int], rng: np.random.Generator, ranges=None
) -> list[int]:
    """Category ids of the instances on one tray of ``level``, in a random order.

    The number of categories and of instances are uniform in the level's ranges (instances at least one per
    category); the extra instances go to random categories of the basket.
    """
    (c_lo, c_hi), (n_lo, n_hi) = (ranges or LEVEL_RANGES)[level]
    if len(category_ids) < c_lo:
        raise ValueError(f"level {level!r} needs at least {c_lo} categories, only {len(category_ids)} available")
    n_cat = int(rng.integers(c_lo, min(c_hi, len(category_ids)) + 1))
    n_inst = int(rng.integers(max(n_lo, n_cat), n_hi + 1))
    chosen = rng.choice(np.asarray(category_ids), size=n_cat, replace=False)
    extra = rng.choice(chosen, size=n_inst - n_cat, replace=True)
    instances = np.concatenate([chosen, extra])
    rng.shuffle(instances)
    return [int(c) for c in instances]
