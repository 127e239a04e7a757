"""Paired fp32 / bf16 comparison of the bf16-quality study.

    python experiments/bf16_quality/summarise.py [DIR]

Reads ``DIR/results.json`` (default ``experiments/bf16_quality/results_2d``), whose runs are named
``<precision>_s<seed>``, and writes ``DIR/summary.md``: for each NFE and metric, the mean and standard
deviation over seeds of each precision, the paired difference bf16 - fp32 (same seed: same noise and
conditions) and the verdict fixed before the study ran: bf16 is *within run-to-run noise* at an NFE when the
mean paired difference is no larger than the seed-to-seed standard deviation of fp32.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

RUN = re.compile(r"(fp32|bf16)_s(\d+)$")
METRICS = ("fid", "kid", "dice", "label_acc", "precision", "recall")


def paired(rows: list[dict], metric: str) -> list[dict]:
    """One summary row per NFE: fp32 / bf16 mean and sd over seeds, the paired difference and the verdict."""
    values: dict[tuple[int, str], dict[int, float]] = {}
    for r in rows:
        match = RUN.match(str(r.get("sampler")))
        if match and r.get(metric) is not None:
            values.setdefault((r["nfe"], match[1]), {})[int(match[2])] = float(r[metric])
    out = []
    for nfe in sorted({n for n, _ in values}):
        fp32, bf16 = values.get((nfe, "fp32"), {}), values.get((nfe, "bf16"), {})
        seeds = sorted(set(fp32) & set(bf16))
        if len(seeds) < 2:
            continue
        diffs = [bf16[s] - fp32[s] for s in seeds]
        noise = statistics.stdev(fp32[s] for s in seeds)
        mean_diff = statistics.mean(diffs)
        out.append(
            {
                "nfe": nfe,
                "seeds": len(seeds),
                "fp32": (statistics.mean(fp32[s] for s in seeds), noise),
                "bf16": (statistics.mean(bf16[s] for s in seeds), statistics.stdev(bf16[s] for s in seeds)),
                "diff": (mean_diff, max(diffs, key=abs)),
                "within_noise": abs(mean_diff) <= noise,
            }
        )
    return out


def fmt(x: float) -> str:
    """Three significant decimals for small values, one for large ones."""
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.4f}" if abs(x) < 1 else f"{x:.3f}"


def summary(result: dict) -> str:
    """The markdown of ``summary.md``."""
    info = result["machine"]
    lines = [
        "# bf16 against fp32, paired by seed",
        "",
        f"From `results.json` ({info['date'][:10]}, {info['cpu']}, torch {info['torch']}, "
        f"commit {info['commit']}).",
        "mean ± sd over seeds; diff = bf16 - fp32 at the same seed (mean, and the largest in size); "
        "within noise: |mean diff| <= the fp32 seed-to-seed sd.",
        "",
    ]
    for metric in METRICS:
        table = paired(result["rows"], metric)
        if not table:
            continue
        lines += [
            f"## {metric}",
            "",
            "| NFE | seeds | fp32 | bf16 | mean diff | largest diff | within noise |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in table:
            lines.append(
                f"| {t['nfe']} | {t['seeds']} | {fmt(t['fp32'][0])} ± {fmt(t['fp32'][1])} "
                f"| {fmt(t['bf16'][0])} ± {fmt(t['bf16'][1])} | {t['diff'][0]:+.4g} | {t['diff'][1]:+.4g} "
                f"| {'yes' if t['within_noise'] else 'no'} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Write ``summary.md`` beside ``results.json``."""
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0] if args else "experiments/bf16_quality/results_2d")
    try:
        result = json.loads((folder / "results.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"{folder / 'results.json'}: cannot read the study's results ({err})") from None
    (folder / "summary.md").write_text(summary(result) + "\n")
    print(f"wrote {folder / 'summary.md'}")


if __name__ == "__main__":
    main()
