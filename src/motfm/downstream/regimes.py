"""Data regimes: which items a downstream network trains on.

The items whose label maps and classes condition the synthetic images (``synthetic_items``) are the same for
every seed (one synthetic set per generator, as a study would generate and release); each seed draws its own
small real subset (``real_items``) from the remaining training items, so the two never overlap. The regimes
are

- ``real``: the small real subset only;
- ``synthetic``: the synthetic images with the masks and classes they were generated for;
- ``both``: the two together (one pool, sampled uniformly);
- ``real_matched``: the *real* images of the synthetic items' conditions: same masks, classes and count,
  real pixels. The upper reference of what the synthetic images of these masks could give.
"""

from __future__ import annotations

import numpy as np
import torch

from motfm.downstream.items import Items

REGIMES = ("real", "synthetic", "both", "real_matched")
GENERATOR_REGIMES = ("synthetic", "both")
_CONDITIONS_SEED = 0x5EED


def draw_indices(num_train: int, num_real: int, num_synthetic: int, seed: int) -> tuple[list[int], list[int]]:
    """Disjoint indices of the small real subset and of the synthetic items' conditions.

    Args:
        num_train: items in the training split.
        num_real: size of the real subset.
        num_synthetic: number of synthetic items (one per conditioning item).
        seed: the replicate's seed; it draws the real subset only (the conditions are fixed).

    Returns:
        ``(real, conditions)``, lists of ``num_real`` and ``num_synthetic`` distinct indices.
    """
    if num_real < 0 or num_synthetic < 0 or num_real + num_synthetic > num_train:
        raise ValueError(
            f"real_items ({num_real}) + synthetic_items ({num_synthetic}) must fit in the {num_train} items "
            "of the training split"
        )
    fixed = np.random.default_rng(_CONDITIONS_SEED).permutation(num_train)
    rest = fixed[num_synthetic:]
    real = np.random.default_rng([int(seed), _CONDITIONS_SEED]).choice(rest, num_real, replace=False)
    return real.tolist(), fixed[:num_synthetic].tolist()


def build_regime(name: str, real: Items, conditions: Items, synthetic: Items | None) -> Items:
    """The training items of regime ``name``.

    Args:
        name: one of :data:`REGIMES`.
        real: the small real subset.
        conditions: the real items whose masks and classes conditioned the synthetic images.
        synthetic: the synthetic items (``None`` for regimes without a generator).

    Returns:
        The items to train on.

    Raises:
        ValueError: unknown regime, a generator regime without synthetic items, or synthetic items that do
            not belong to ``conditions``.
    """
    if name not in REGIMES:
        raise ValueError(f"unknown regime {name!r}; expected one of {REGIMES}")
    if name == "real":
        return real
    if name == "real_matched":
        return conditions
    if synthetic is None:
        raise ValueError(f"regime {name!r} needs synthetic items")
    if not bool(synthetic.synthetic.all()) or not torch.equal(
        synthetic.source_index, conditions.source_index
    ):
        raise ValueError("the synthetic items were not generated for these conditioning items")
    return synthetic if name == "synthetic" else Items.cat([real, synthetic])
