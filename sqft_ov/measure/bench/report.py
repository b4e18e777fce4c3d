"""A bench report as table rows, markdown and a PNG chart (the JSON is the report itself; the CLI draws the rows
as terminal tables in `sqft_ov.cli.tables`). Each takes a `BenchResult` or its JSON form (a dict)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from sqft_ov.io.output import check_output_file, write_file_atomic

SPEED_COLUMNS = ("model", "engine", "decode tok/s", "x base decode", "prefill tok/s", "x base prefill",
                 "TTFT ms", "TPOT ms")
RESOURCE_COLUMNS = ("model", "load s", "peak RSS MiB", "size MiB", "weights MB/token", "weights GB/s",
                    "of bandwidth", "FullyConnected kernels")


def _number(value: float, digits: int | None = None) -> str:
    """Three significant figures or so: 1234, 98.7, 3.21 (or a fixed number of decimals)."""
    if digits is None:
        digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:.{digits}f}"


def _spread(stats: dict, scale: float = 1.0, digits: int | None = None) -> str:
    """Median [first quartile-third quartile]."""
    return (f"{_number(stats['median'] * scale, digits)} "
            f"[{_number(stats['q1'] * scale, digits)}-{_number(stats['q3'] * scale, digits)}]")


def _ratio(entry: dict, metric: str) -> str:
    if not entry.get("ratios"):
        return "-"
    return _spread(entry["ratios"][metric], digits=2)


def _kernels(entry: dict) -> str:
    primitives = entry.get("fc_primitives")
    if not primitives:
        return "-"
    text = ", ".join(f"{n} {p}" for p, n in sorted(primitives.items(), key=lambda kv: -kv[1]))
    return text + (" (sparse engaged)" if entry["sparse_decompression_engaged"] else "")


def as_dict(report) -> dict:
    """A `BenchResult` as its JSON form; a dict (a report read back from JSON) as it is."""
    return report.to_dict() if hasattr(report, "to_dict") else report


def rows(report) -> tuple[list[list[str]], list[list[str]]]:
    """(speed rows, resource rows) as display strings; failed models get their error in the speed table."""
    report = as_dict(report)
    speed, resources = [], []
    for entry in report["models"]:
        if not entry["ok"]:
            speed.append([entry["label"], "failed", entry["error"], "", "", "", "", ""])
            continue
        s = entry["stats"]
        speed.append([entry["label"], entry["engine"], _spread(s["decode_tokens_per_s"]), _ratio(entry, "decode_tokens_per_s"),
                      _spread(s["prefill_tokens_per_s"]), _ratio(entry, "prefill_tokens_per_s"),
                      _spread(s["ttft_s"], 1e3), _spread(s["tpot_s"], 1e3)])
        share = entry["bandwidth_share"]
        resources.append([entry["label"], f"{entry['load_seconds']:.1f}", f"{entry['peak_rss_mib']:.0f}",
                          f"{entry['size_bytes'] / 2**20:.1f}", f"{entry['weight_bytes_per_token'] / 1e6:.1f}",
                          f"{entry['weight_gb_per_s']:.2f}", "-" if share is None else f"{share:.0%}", _kernels(entry)])
    return speed, resources


def context_lines(report) -> list[str]:
    report = as_dict(report)
    c, m, b = report["config"], report["machine"], report["bandwidth"]
    lines = [f"{m['cpu']}, {m['usable_cores']} usable cores ({m['physical_cores']} physical), "
             f"{'AMX' if m['amx'] else 'no AMX'}, {m['memory_gib']} GiB; load average "
             f"{m['load_average_start'][0] if m['load_average_start'] else '-'} -> "
             f"{m['load_average_end'][0] if m['load_average_end'] else '-'}",
             f"device {c['device']}, prompt {c['prompt_tokens']} tokens, {c['new_tokens']} new tokens (greedy, EOS "
             f"ignored), {c['repeats']} interleaved repeats after {c['warmup']} warm-up; medians [quartiles]; "
             f"x base = median of per-repeat ratios to {report['baseline']}"]
    if b:
        lines.append(f"memory read bandwidth: {b['median']:.1f} GB/s median, {b['max']:.1f} max over "
                     f"{b['n']} passes (the limit 'of bandwidth' refers to)")
    if c["ir_properties"]:
        lines.append("IR properties: " + ", ".join(f"{k}={v}" for k, v in c["ir_properties"].items()))
    lines.append(", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    return lines


def markdown(report) -> str:
    speed, resources = rows(report)
    out = io.StringIO()
    for columns, data in ((SPEED_COLUMNS, speed), (RESOURCE_COLUMNS, resources)):
        out.write("| " + " | ".join(columns) + " |\n|" + "|".join("---" for _ in columns) + "|\n")
        for row in data:
            out.write("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |\n")
        out.write("\n")
    out.write("".join(f"- {line}\n" for line in context_lines(report)))
    return out.getvalue()


def plot_png(report) -> bytes:
    """Decode and prefill tokens/s per model: bars at the median, error bars from the first to the third quartile."""
    report = as_dict(report)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [e for e in report["models"] if e["ok"]]
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 2.0 * len(ok) + 3), 4.5))
    for ax, metric, title in ((axes[0], "decode_tokens_per_s", "decode tokens/s"),
                              (axes[1], "prefill_tokens_per_s", "prefill tokens/s")):
        medians = [e["stats"][metric]["median"] for e in ok]
        errors = [[m - e["stats"][metric]["q1"] for m, e in zip(medians, ok)],
                  [e["stats"][metric]["q3"] - m for m, e in zip(medians, ok)]]
        ax.bar(range(len(ok)), medians, yerr=errors, capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(ok)), [e["label"] for e in ok], rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{title}: median, quartiles", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{report['machine']['cpu']} - {report['config']['device']}", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def check_report_paths(paths: list[Path | None], overwrite: bool) -> None:
    """Refuse existing report files before a long benchmark starts, not after."""
    for path in paths:
        if path is not None:
            check_output_file(path, overwrite)


def write_reports(report, json_path: Path | None = None, markdown_path: Path | None = None,
                  plot_path: Path | None = None, overwrite: bool = False) -> None:
    if json_path:
        write_file_atomic(json_path, json.dumps(as_dict(report), indent=2) + "\n", overwrite)
    if markdown_path:
        write_file_atomic(markdown_path, markdown(report), overwrite)
    if plot_path:
        write_file_atomic(plot_path, plot_png(report), overwrite)
