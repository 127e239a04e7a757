"""Patient-level splitting: every image of one patient (or case, or DICOM series) lands in the same split.

Frames are never split individually: the split is decided per *group* id (a patient id) and every item
inherits its group's split, so no patient can appear in two splits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """Validate split fractions: keys among ``train/val/test``, non-negative, summing to 1.

    Raises:
        ValueError: on unknown split names, negative values or a sum other than 1.
    """
    fr = {str(k): float(v) for k, v in fractions.items()}
    unknown = set(fr) - set(SPLITS)
    if unknown:
        raise ValueError(
            f"split_fractions: unknown split(s) {sorted(unknown)}; expected a subset of {SPLITS}"
        )
    if any(v < 0 for v in fr.values()):
        raise ValueError(f"split_fractions must be non-negative, got {fr}")
    if abs(sum(fr.values()) - 1.0) > 1e-6:
        raise ValueError(f"split_fractions must sum to 1, got {fr} (sum {sum(fr.values()):.4g})")
    return {s: fr.get(s, 0.0) for s in SPLITS}


def assign_groups(
    groups: Sequence[str], fractions: Mapping[str, float] = DEFAULT_FRACTIONS, seed: int = 0
) -> dict[str, str]:
    """Assign each group id to a split, deterministically.

    The unique ids are sorted, shuffled by ``numpy.random.default_rng(seed)`` and cut by the cumulative
    fractions (largest-remainder rounding, and every split with a positive fraction gets at least one group
    when there are enough groups), so the result depends only on the set of ids, ``fractions`` and ``seed``.

    Args:
        groups: group ids (duplicates allowed).
        fractions: fraction of groups per split name.
        seed: shuffling seed.

    Returns:
        ``{group_id: split_name}`` for every unique id.
    """
    fr = check_fractions(fractions)
    ids = sorted(set(groups))
    n = len(ids)
    order = np.random.default_rng(seed).permutation(n)
    counts = _counts(n, fr)
    assignment: dict[str, str] = {}
    start = 0
    for split in SPLITS:
        for i in order[start : start + counts[split]]:
            assignment[ids[i]] = split
        start += counts[split]
    return assignment


def _counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Group counts per split summing to ``n`` (largest remainder; positive fractions get >= 1 group)."""
    exact = {s: fractions[s] * n for s in SPLITS}
    counts = {s: int(np.floor(v)) for s, v in exact.items()}
    for s in sorted(SPLITS, key=lambda s: exact[s] - counts[s], reverse=True)[: n - sum(counts.values())]:
        counts[s] += 1
    wanted = [s for s in SPLITS if fractions[s] > 0]
    if n >= len(wanted):
        for s in wanted:
            if counts[s] == 0:
                donor = max(wanted, key=lambda d: counts[d])
                counts[donor] -= 1
                counts[s] += 1
    return counts


def select_split(
    items: Sequence[str],
    group_of: Mapping[str, str],
    split: str,
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> list[str]:
    """The items of ``split``, in their given order.

    Args:
        items: item ids (e.g. file names or case ids).
        group_of: the group (patient) id of each item.
        split: ``train``, ``val`` or ``test``.
        fractions: fraction of groups per split.
        seed: shuffling seed.

    Returns:
        The items whose group is assigned to ``split``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    assignment = assign_groups([group_of[i] for i in items], fractions, seed)
    return [i for i in items if assignment[group_of[i]] == split]
