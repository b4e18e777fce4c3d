"""`tune`'s reports as plain lines (the CLI prints them beside its tables, in `sqft_ov.cli.tables`; the README and
benchmarks quote them). Each takes a `TuneResult` or its JSON form (a dict)."""

from __future__ import annotations


def as_dict(report) -> dict:
    """A `TuneResult` / `ExportGridResult` as its JSON form; a dict (a report read back from JSON) as it is."""
    return report.to_dict() if hasattr(report, "to_dict") else report


def ratio_text(r: dict | None) -> str:
    return f"{r['median']:.2f} ({r['q1']:.2f}-{r['q3']:.2f})" if r else "-"


def best_line(report) -> str:
    best = as_dict(report)["best"]
    if not best["setting"]:
        return f"best: the current configuration ({best['reason']})"
    return (f"best: {best['setting_text']}: decode × {best['decode_ratio']['median']:.2f} "
            f"(q1-q3 {best['decode_ratio']['q1']:.2f}-{best['decode_ratio']['q3']:.2f}) of the current "
            f"configuration, max |Δlogit| {best['max_logit_diff']:.3g} ({best['reason']})")


def profile_lines(profile: dict) -> list[str]:
    """The answer to 'where does a decode step's time go', in two sentences."""
    fc = profile["fully_connected"]
    lines = [f"one decode step: {profile['step_ms']:.2f} ms wall, {profile['graph_ms']:.2f} ms in graph nodes; "
             f"FullyConnected {fc['ms']:.2f} ms ({fc['share_of_graph']:.0%} of the nodes) reading "
             f"{fc['weight_bytes'] / 1e6:.3g} MB of weights at {fc['gb_per_s'] or 0:.1f} GB/s"]
    if fc.get("x_bandwidth"):
        lines.append(f"the FullyConnected layers take {fc['x_bandwidth']:.2f}× their bandwidth time "
                     f"({fc['bandwidth_ms']:.2f} ms at the {profile['bandwidth_gb_per_s']:.1f} GB/s measured now); "
                     "slowest against it: " + ", ".join(
                         f"{r['name'].split('/')[0].removeprefix('__module.')} {r['x_bandwidth']:.1f}×"
                         for r in profile["fully_connected_layers"][:3]))
    return lines
