"""What the memorisation audit shows a person: ``closest_pairs.png`` (the samples nearest to a training
image beside that image, with their distances) and the ``audit.md`` summary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

from motfm.io.images import mid_slices, to_uint8
from motfm.metrics.report import markdown_table

_CAPTION_WIDTH = 330
_PAD = 6
_HEADER = 18


def _tile(images: Tensor) -> list[Image.Image]:
    """``[K, C, *spatial]`` in [-1, 1] -> K PIL images (3D: the three mid slices side by side)."""
    if images.ndim == 5:
        images = mid_slices(images)
    images = images if images.shape[1] == 3 else images[:, :1]
    pixels = to_uint8(images)  # [K, C, H, W]
    return [
        Image.fromarray(p[0] if p.shape[0] == 1 else np.moveaxis(p, 0, -1)).convert("RGB") for p in pixels
    ]


def closest_pairs_picture(samples: Tensor, training: Tensor, captions: Sequence[str]) -> np.ndarray:
    """One row per pair: a generated sample, its nearest training image, and a caption.

    Args:
        samples: ``[K, C, H, W]`` or ``[K, C, D, H, W]`` in [-1, 1].
        training: the training images of the same shape, in the same order.
        captions: K texts (lines separated by newlines).

    Returns:
        A uint8 RGB picture ``[height, width, 3]``.
    """
    left, right = _tile(samples), _tile(training)
    height, width = left[0].height, left[0].width
    scale = max(1, 96 // max(height, 1))
    cell_h, cell_w = height * scale, width * scale
    row_h = max(cell_h, 48) + _PAD
    canvas = Image.new("RGB", (2 * cell_w + 3 * _PAD + _CAPTION_WIDTH, _HEADER + len(left) * row_h), "black")
    draw = ImageDraw.Draw(canvas)
    draw.text((_PAD, 4), "generated", fill="white")
    draw.text((2 * _PAD + cell_w, 4), "nearest training", fill="white")
    for row, (a, b, caption) in enumerate(zip(left, right, captions)):
        y = _HEADER + row * row_h
        canvas.paste(a.resize((cell_w, cell_h), Image.NEAREST), (_PAD, y))
        canvas.paste(b.resize((cell_w, cell_h), Image.NEAREST), (2 * _PAD + cell_w, y))
        draw.multiline_text((3 * _PAD + 2 * cell_w, y), caption, fill="white", spacing=3)
    return np.asarray(canvas)


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _space_row(name: str, space: Mapping[str, Any]) -> dict[str, str]:
    copied = space["copied"]
    row = {
        "space": name,
        "copied share": f"{_num(copied['share'])} ({copied['count']}/{space['num_samples']})",
        "if novel": _num(copied["expected_share_if_novel"]),
        "p (copied)": _num(copied["p_value"], 2),
        "z (global)": _num(space["mann_whitney"]["z"]),
        "C_T": _num(space.get("c_t", {}).get("c_t")),
        "ratio min / median": f"{_num(space['ratio']['min'])} / {_num(space['ratio']['median'])}",
    }
    auth = space.get("authenticity")
    row["authenticity (held-out)"] = f"{_num(auth['samples'])} ({_num(auth['heldout'])})" if auth else "-"
    return row


def audit_markdown(result: Mapping[str, Any]) -> str:
    """The ``audit.md`` text of an :func:`motfm.audit.audit` result."""
    verdict, rule = result["verdict"], result["verdict"]["rule"]
    names = [name for name in ("features", "structure", "pixels") if result.get(name) is not None]
    rows = [_space_row(name, result[name]) for name in names]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    pairs = [
        {
            "rank": rank + 1,
            "sample": p["sample"],
            "training item": p["train_index"],
            "found in": p["space"],
            **{f"{name} ratio": _num(p.get(f"{name}_ratio")) for name in names if name != "pixels"},
            "pixel d (pair)": _num(p["pixel_distance"]),
        }
        for rank, p in enumerate(result["closest_pairs"])
    ]
    source = result["samples"] or result["ckpt_path"]
    structure = result.get("structure_size")
    lines = [
        f"# Memorisation audit of {source}",
        "",
        f"**copying suspected: {'yes' if verdict['copying_suspected'] else 'no'}**"
        + (f" ({'; '.join(verdict['reasons'])})" if verdict["reasons"] else ""),
        "",
        f"Rule (fixed; in each of the spaces {', '.join(rule['spaces'])}): C_T < {rule['c_t_below']:g}, or a "
        f"copied share with p < {rule['copied_share_p_value_below']:g} under 'samples as novel as held-out "
        "data'.",
        "",
        f"{result['num_samples']} samples against {result['num_train']} training items "
        f"({result['train_split']} split) and {result['num_heldout']} held-out items "
        f"({result['heldout_split']} split) of `{result['dataset']}`. Spaces: features "
        f"`{result['extractor']}` (weights {result['weights_hash']})"
        + (f"; structure: {structure}-pixel thumbnails" if structure else "")
        + ("; pixels: raw images (not in the verdict)" if result.get("pixels") is not None else "")
        + ".",
        "",
        markdown_table(rows, columns),
        "Copied share: samples closer to a training item than any held-out item ('if novel': the share "
        "expected if samples were as novel as held-out data). Ratio: a sample's nearest-training distance "
        "over the median one of the held-out items. z / C_T: Mann-Whitney z of sample vs held-out "
        "nearest-training distances, globally / within k-means cells (Meehan et al. 2020); negative: closer "
        "than new real data. Authenticity: share of samples farther from their nearest training item than "
        "that item's own nearest neighbour (held-out items in brackets).",
        "",
        "## Closest pairs (closest_pairs.png)",
        "",
        markdown_table(pairs, list(pairs[0])),
    ]
    lines += [f"- {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"
