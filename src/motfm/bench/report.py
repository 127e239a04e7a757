"""The benchmark's markdown summary (ratios ours/ref) and where the results files go."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def output_stem(out_dir: str | Path, info: dict[str, Any], device: torch.device, reference: bool) -> Path:
    """``<out_dir>/<date>-<device>[-reference]`` (the results files add ``.json`` / ``.md``)."""
    return Path(out_dir) / f"{info['date'][:10]}-{device.type}{'-reference' if reference else ''}"


def _num(value: float | None, fmt: str = ".0f") -> str:
    return "–" if value is None else format(value, fmt)


def _ratio(ours: float | None, ref: float | None) -> str:
    return "–" if ours is None or ref is None or ref == 0 else f"{ours / ref:.2f}"


def _peak_fraction(flops: int, seconds: float, peak: float | None) -> str:
    if not seconds:
        return "–"
    achieved = flops / seconds
    share = f" ({100 * achieved / peak:.0f}%)" if peak else ""
    return f"{achieved / 1e9:.0f}{share}"


def header(info: dict[str, Any]) -> list[str]:
    """The machine, the peak FLOP/s probes, what precision=auto chose and what was skipped."""
    peaks = "; ".join(
        f"{dtype} {p['peak'] / 1e9:.0f} GFLOP/s "
        f"(matmul {p['matmul'] / 1e9:.0f}, 3x3 conv {p['conv3x3'] / 1e9:.0f})"
        for dtype, p in info["peak_probes"].items()
    )
    auto = "; ".join(f"{d}: {p['name']} ({p['reason']})" for d, p in info["precision_auto"].items())
    lines = [
        f"# motfm benchmark, {info['date']}",
        "",
        f"- device: {info['device']} ({info['threads']} threads; 1-min load average at the start: "
        f"{info.get('load_average_1min')})",
        f"- python {info['python']}, torch {info['torch']}, lightning {info['lightning']}",
        f"- peak measured in this run (the better of a matmul and a 3x3 convolution): {peaks}",
        f"- precision=auto chooses {auto}",
    ]
    if info.get("reference"):
        lines.append(
            "- reference: MONAI Generative DiffusionModelUNet (+ ControlNet) at the same architecture, fed "
            "as the MOTFM code feeds it (motfm.bench.reference); timings alternate motfm / reference"
        )
    elif info.get("reference_skipped"):
        lines.append(f"- reference skipped: {info['reference_skipped']}")
    if info.get("bf16_skipped"):
        lines.append(f"- {info['bf16_skipped']}")
    return lines


def speed_tables(info: dict[str, Any], results: list[dict[str, Any]]) -> list[str]:
    """Evaluation, training step, sampling and memory, motfm beside the reference, with ratios ours/ref (none
    for a run without cases, e.g. the 3D memory table alone)."""
    if not results:
        return []
    peaks = info["peak_flops"]
    lines = [
        "",
        "## Speed (ratios ours/ref: time or memory of motfm over the reference; below 1 = motfm better)",
        "",
        "| case | precision | image x batch | params M (motfm / ref) | GFLOP per eval (motfm / ref) | "
        "eval ms motfm | eval ms ref | eval ours/ref | train step ms motfm | train step ms ref | "
        "train ours/ref | eval GFLOP/s (% of peak) motfm | ref | train peak MiB motfm | ref | "
        "memory ours/ref |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    samp = [
        "",
        "### Sampling (Euler; images/s)",
        "",
        "| case | precision | NFE | motfm images/s | ref images/s | time ours/ref |",
        "|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for r in results:
        ours, ref = r["candidates"]["motfm"], r["candidates"].get("reference", {})
        peak = peaks.get(r["precision"])
        size = "x".join(map(str, r["image_size"])) + f" x {r['batch_size']}"
        mem_o = ours.get("train_memory", {}).get("peak_MiB")
        mem_r = ref.get("train_memory", {}).get("peak_MiB")
        ref_params, ref_flops = ref.get("params"), ref.get("eval_flops")
        ref_eval, ref_train = ref.get("eval_s"), ref.get("train_step_s")
        lines.append(
            f"| {r['case']} | {r['precision']} | {size} | {ours['params'] / 1e6:.2f} / "
            f"{_num(ref_params and ref_params / 1e6, '.2f')} | {ours['eval_flops'] / 1e9:.1f} / "
            f"{_num(ref_flops and ref_flops / 1e9, '.1f')} | {ours['eval_s'] * 1e3:.0f} | "
            f"{_num(ref_eval and ref_eval * 1e3)} | {_ratio(ours['eval_s'], ref_eval)} | "
            f"{ours['train_step_s'] * 1e3:.0f} | {_num(ref_train and ref_train * 1e3)} | "
            f"{_ratio(ours['train_step_s'], ref_train)} | "
            f"{_peak_fraction(ours['eval_flops'], ours['eval_s'], peak)} | "
            f"{_peak_fraction(ref['eval_flops'], ref['eval_s'], peak) if ref else '–'} | "
            f"{_num(mem_o)} | {_num(mem_r)} | {_ratio(mem_o, mem_r)} |"
        )
        ref_samp = {s["nfe"]: s for s in ref.get("sampling", [])}
        for s in ours["sampling"]:
            rs = ref_samp.get(s["nfe"], {})
            samp.append(
                f"| {r['case']} | {r['precision']} | {s['nfe']} | {s['images_per_s']:.2f} | "
                f"{_num(rs.get('images_per_s'), '.2f')} | {_ratio(s['seconds'], rs.get('seconds'))} |"
            )
        for side, c in (("motfm", ours), ("reference", ref)):
            for note in c.get("notes", []):
                notes.append(f"- {r['case']}, {side}: {note}")
            if "error" in c.get("train_memory", {}):
                notes.append(f"- {r['case']}, {side}: memory not measured: {c['train_memory']['error']}")
    return lines + samp + ([""] + sorted(set(notes)) if notes else [])


def auto_check(info: dict[str, Any], results: list[dict[str, Any]]) -> list[str]:
    """Where both fp32 and bf16 were measured: precision=auto's choice against the faster of the two."""
    lines = []
    by_case: dict[str, dict[str, dict[str, Any]]] = {}
    for r in results:
        by_case.setdefault(r["case"], {})[r["precision"]] = r
    for case, runs in by_case.items():
        if not {"fp32", "bf16"} <= runs.keys():
            continue
        dims = f"{len(runs['fp32']['image_size'])}d"
        chosen = info["precision_auto"][dims]["name"]
        for key, what in (("eval_s", "evaluation"), ("train_step_s", "training step")):
            times = {p: runs[p]["candidates"]["motfm"][key] for p in ("fp32", "bf16")}
            slower = times[chosen] / min(times.values()) - 1
            lines.append(
                f"- precision=auto on {case}, {what}: {chosen}, {100 * slower:.0f}% slower than the faster "
                f"of fp32 {times['fp32'] * 1e3:.0f} ms / bf16 {times['bf16'] * 1e3:.0f} ms"
            )
    return [""] + lines if lines else []


def memory_section(rows: list[dict[str, Any]]) -> list[str]:
    """3D peak training memory by model, volume, precision and activation checkpointing (what fits)."""
    if not rows:
        return []
    lines = [
        "",
        "## 3D training memory (batch 1; peak of a fresh process per cell, CPU: VmHWM incl. the "
        "interpreter and weights; CUDA: max allocated)",
        "",
        "| model | volume | precision | motfm MiB | motfm + checkpointing MiB | reference MiB | "
        "checkpointing / ref | step s: motfm / + checkpointing / ref | checkpointing step / plain step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(r: dict[str, Any]) -> tuple[str, str, str, tuple[str, ...]]:
        """A table row: model, volume, precision and the table's overrides (two tables never share a row)."""
        volume = r.get("volume") or f"{r['size']}³"
        return r["model"], volume, r.get("precision", "fp32"), tuple(r.get("overrides", ()))

    keyed = {(*cell(r), r["side"], r["checkpointing"]): r for r in rows}
    errors = []
    for key in dict.fromkeys(cell(r) for r in rows):
        model, vol, precision, _ = key
        plain = keyed.get((*key, "motfm", False), {})
        ckpt = keyed.get((*key, "motfm", True), {})
        ref = keyed.get((*key, "reference", False), {})
        for name, r in (("motfm", plain), ("motfm + checkpointing", ckpt), ("reference", ref)):
            if "error" in r:
                errors.append(f"- {model} {vol} {precision} {name}: {r['error']}")
        lines.append(
            f"| {model} | {vol} | {precision} | {_num(plain.get('peak_MiB'))} | "
            f"{_num(ckpt.get('peak_MiB'))} | "
            f"{_num(ref.get('peak_MiB'))} | {_ratio(ckpt.get('peak_MiB'), ref.get('peak_MiB'))} | "
            f"{_num(plain.get('step_s'), '.2f')} / {_num(ckpt.get('step_s'), '.2f')} / "
            f"{_num(ref.get('step_s'), '.2f')} | {_ratio(ckpt.get('step_s'), plain.get('step_s'))} |"
        )
    return lines + ([""] + errors if errors else [])


def profile_section(results: list[dict[str, Any]]) -> list[str]:
    """Per case: one evaluation's time by kind of work and its operators with the most self time, motfm beside
    the reference."""
    lines: list[str] = []
    for r in results:
        cands = {n: c["eval_profile"] for n, c in r["candidates"].items() if c.get("eval_profile")}
        if not cands:
            continue
        if not lines:
            title = "## Where one evaluation spends its time (torch.profiler self time, share of the call)"
            lines = ["", title]
        lines += ["", f"**{r['case']}, {r['precision']}**", ""]
        kinds = {
            n: c["eval_profile_kinds"] for n, c in r["candidates"].items() if c.get("eval_profile_kinds")
        }
        if kinds:
            names = list(dict.fromkeys(k["kind"] for ks in kinds.values() for k in ks))
            lines += ["| kind of work | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
            for name in names:
                cells = []
                for ks in kinds.values():
                    k = next((k for k in ks if k["kind"] == name), None)
                    cells.append(f"{k['ms']:.0f} ms ({100 * k['share']:.0f}%)" if k else "-")
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += ["| " + " | ".join(cands) + " |", "|" + "---|" * len(cands)]
        for i in range(max(len(p) for p in cands.values())):
            cells = []
            for p in cands.values():
                op = p[i] if i < len(p) else None
                cells.append(f"`{op['op']}` {op['ms']:.0f} ms ({100 * op['share']:.0f}%)" if op else "")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def imported_section(rows: list[dict[str, Any]]) -> list[str]:
    """Imported MOTFM models against their original (:mod:`motfm.bench.imported`): evaluation and Euler
    sampling time at the released sizes, and how far the two velocities lie apart."""
    if not rows:
        return []
    lines = [
        "",
        "## Imported MOTFM models (python -m motfm.import_motfm) against the original code, same weights",
        "",
        "| case | precision | image x batch | params M | eval ms imported | eval ms original | "
        "eval ours/ref | Euler sampling s imported / original (ours/ref) | velocity rel. diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours, ref = r["candidates"]["motfm"], r["candidates"]["reference"]
        size = "x".join(map(str, r["image_size"])) + f" x {r['batch_size']}"
        ref_samp = {s["nfe"]: s["seconds"] for s in ref.get("sampling", [])}
        samp = "; ".join(
            f"NFE {s['nfe']}: {s['seconds']:.2f} / {_num(ref_samp.get(s['nfe']), '.2f')} "
            f"({_ratio(s['seconds'], ref_samp.get(s['nfe']))})"
            for s in ours.get("sampling", [])
        )
        lines.append(
            f"| {r['case']} | {r['precision']} | {size} | {ours['params'] / 1e6:.1f} | "
            f"{ours['eval_s'] * 1e3:.0f} | {ref['eval_s'] * 1e3:.0f} | "
            f"{_ratio(ours['eval_s'], ref['eval_s'])} | "
            f"{samp or '–'} | {r['velocity_rel_diff']:.1e} |"
        )
    return lines


def to_markdown(
    info: dict[str, Any],
    results: list[dict[str, Any]],
    memory: list[dict[str, Any]],
    imported: list[dict[str, Any]] | None = None,
) -> str:
    """The readable summary of a benchmark run."""
    sections = header(info) + speed_tables(info, results) + auto_check(info, results) + memory_section(memory)
    sections += imported_section(imported or []) + profile_section(results)
    return "\n".join(sections) + "\n"
