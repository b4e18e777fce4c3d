"""How the quickstart's table writes its figures: accuracy with its seeds, intervals, ratios, speeds."""

from __future__ import annotations


def accuracy_text(row: dict) -> str:
    if row["accuracy"] is None:
        return "-"
    if row["runs"] < 2:
        return f"{row['accuracy']:.1%}"
    return f"{row['accuracy']:.1%} ({row['accuracy_min']:.1%}–{row['accuracy_max']:.1%}, {row['runs']} seeds)"


def interval_text(row: dict, key: str = "accuracy_ci95") -> str:
    interval = row.get(key)
    if not interval:
        return "-"
    if key == "accuracy_ci95":
        return f"{interval[0]:.1%}–{interval[1]:.1%}"
    return f"{100 * interval[0]:+.1f} to {100 * interval[1]:+.1f}"


def ratio_text(row: dict) -> str:
    """The ratio to LoRA with its paired 95 % interval (seeds and problems resampled)."""
    ratio, ci = row["relative_to_lora"], row.get("relative_to_lora_ci95")
    return percent_text(ratio) + (f" ({ci[0]:.1%}–{ci[1]:.1%})" if ratio is not None and ci else "")


def percent_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def speed_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def decode_text(row: dict) -> str:
    """Median decode tok/s with its min–max over the bench's interleaved repeats."""
    spread = row.get("decode_range")
    return speed_text(row["decode_tokens_per_s"]) + (f" ({spread[0]:.0f}–{spread[1]:.0f})" if spread else "")


def decode_ratio_text(row: dict) -> str:
    """The paired per-repeat decode ratio to unmerged LoRA: median (min–max)."""
    ratio = row.get("decode_vs_lora")
    return "-" if not ratio else f"{ratio['median']:.2f} ({ratio['min']:.2f}–{ratio['max']:.2f})"


def choices_text(choices: dict) -> str:
    """What was chosen on the validation split, in one line ("" when nothing was)."""
    chosen = choices.get("chosen") or {}
    if not chosen:
        return ""
    parts = [f"LoRA-family learning rate {chosen['lr']:g}" if "lr" in chosen else "",
             f"QA rows' learning rate {chosen['qa_lr']:g}" if "qa_lr" in chosen else ""]
    if "qa_distill" in chosen:
        weight = chosen["qa_distill"]
        parts.append(f"QA rows distilled from the same seed's LoRA at weight {weight:g}" if weight
                     else "QA rows without distillation (it did not help on validation)")
    return f"Chosen on {choices.get('split', 'the validation split')} (seed {choices.get('seed')}): " + \
        "; ".join(p for p in parts if p) + "."
