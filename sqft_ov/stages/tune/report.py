"""`tune`'s reports as rich tables (the CLI prints them) and as plain lines for the README and benchmarks."""

from __future__ import annotations

from rich.table import Table


def _ratio(r: dict | None) -> str:
    return f"{r['median']:.2f} ({r['q1']:.2f}-{r['q3']:.2f})" if r else "-"


def _status(row: dict) -> str:
    if row.get("error"):
        return f"[red]{row['error']}"
    return "[yellow]" + "; ".join(row["flags"]) if row["flags"] else "ok"


def settings_table(report: dict) -> Table:
    current = report["current"]
    speeds = current["decode_tokens_per_s"]
    title = (f"runtime settings of {report['ir']}, each against the current configuration "
             f"({', '.join(f'{k}={v}' for k, v in current['runtime_config'].items()) or 'OpenVINO defaults'}"
             + (f", {min(speeds):.1f}-{max(speeds):.1f} decode tok/s" if speeds else "") + ")")
    table = Table(title=title, title_justify="left")
    for column in ("#", "setting", "decode tok/s", "decode × current (q1-q3)", "prefill × current",
                   "max |Δlogit| vs f32", "top-1 = f32", "status"):
        table.add_column(column, justify="left" if column in ("setting", "status") else "right", overflow="fold")
    table.add_row("", "(current)", "", "1.00", "1.00", f"{current['max_logit_diff']:.3g}",
                  f"{current['top1_agreement']:.0%}", "reference for speed")
    for i, row in enumerate(report["rows"], 1):
        table.add_row(str(i), row["setting_text"],
                      f"{row['decode_tokens_per_s']:.1f}" if row.get("decode_tokens_per_s") else "-",
                      _ratio(row.get("decode_ratio")), _ratio(row.get("prefill_ratio")),
                      f"{row['max_logit_diff']:.3g}" if row.get("max_logit_diff") is not None else "-",
                      f"{row['top1_agreement']:.0%}" if row.get("top1_agreement") is not None else "-",
                      _status(row))
    return table


def best_line(report: dict) -> str:
    best = report["best"]
    if not best["setting"]:
        return f"best: the current configuration ({best['reason']})"
    return (f"best: {best['setting_text']}: decode × {best['decode_ratio']['median']:.2f} "
            f"(q1-q3 {best['decode_ratio']['q1']:.2f}-{best['decode_ratio']['q3']:.2f}) of the current "
            f"configuration, max |Δlogit| {best['max_logit_diff']:.3g} ({best['reason']})")


def profile_table(profile: dict, title: str, limit: int = 8) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("node type", "kernel", "nodes", "ms per step", "share"):
        table.add_column(column, justify="left" if column in ("node type", "kernel") else "right")
    for row in profile["by_node_type"][:limit]:
        table.add_row(row["node_type"], row["exec_type"], str(row["count"]), f"{row['ms']:.2f}", f"{row['share']:.1%}")
    table.add_row("[dim]outside the nodes", "", "", f"[dim]{profile['outside_graph_ms']:.2f}", "")
    return table


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


def grid_table(result: dict) -> Table:
    table = Table(title=f"export grid of {result['model']} (each × {result['baseline']}, interleaved)",
                  title_justify="left")
    for column in ("#", "export", "size MB", "decode tok/s", "decode ×", "prefill ×", "max |Δlogit| vs FP16",
                   "top-1 = FP16", "status"):
        table.add_column(column, justify="left" if column in ("export", "status") else "right", overflow="fold")
    for i, row in enumerate(result["rows"], 1):
        table.add_row(str(i), row["name"], f"{row['size_bytes'] / 1e6:.0f}" if row.get("size_bytes") else "-",
                      f"{row['decode_tokens_per_s']:.1f}" if row.get("decode_tokens_per_s") else "-",
                      _ratio(row.get("decode_ratio")), _ratio(row.get("prefill_ratio")),
                      f"{row['max_logit_diff']:.3g}" if row.get("max_logit_diff") is not None else "-",
                      f"{row['top1_agreement']:.0%}" if row.get("top1_agreement") is not None else "-",
                      f"[red]{row['error']}" if row.get("error") else "ok")
    return table
