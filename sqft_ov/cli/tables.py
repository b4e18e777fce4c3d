"""Every table and summary line the CLI prints, in one place: commands compute, this module renders.

The benchmark's and tuner's rows and plain lines live with their reports (`measure.bench.report`,
`measure.tune.report`), which the benchmarks and quickstart also write; the rich tables are drawn here.
"""

from __future__ import annotations

from rich.table import Table


def field_table(title: str, rows: list[tuple[str, str]]) -> Table:
    """A two-column field/value table: the shape of most command summaries."""
    table = Table(title=title)
    table.add_column("field")
    table.add_column("value")
    for key, value in rows:
        table.add_row(key, value)
    return table


def sparsity_table(report, limit: int = 12) -> Table:
    table = Table(title=f"{report.config.method} {report.config.pattern} sparsity")
    for col in ("weight", "zeros", "numel", "sparsity"):
        table.add_column(col, justify="left" if col == "weight" else "right")
    rows = list(report.layers.items())
    for name, (zeros, numel) in rows[:limit]:
        table.add_row(name, str(zeros), str(numel), f"{zeros / numel:.2%}")
    if len(rows) > limit:
        table.add_row(f"... {len(rows) - limit} more (see sparsity.json)", "", "", "")
    table.add_row("[bold]total", "", "", f"[bold]{report.total:.2%}")
    return table


def export_table(report) -> Table:
    table = Table(title=f"OpenVINO IR: {report.output}")
    table.add_column("field")
    table.add_column("value")
    for key, value in report.settings.items():
        if key == "group_size_exceptions":  # per layer: too long for a table, summarised in group_sizes
            value = f"{len(value)} layers (per layer in sqft_export.json)" if value else "none"
        table.add_row(key, str(value))
    storages = sorted({w["storage"] for w in report.weights.values()})
    table.add_row("weight storage", ", ".join(storages))
    table.add_row("source zeros kept in IR", f"{report.zeros_kept}/{report.source_zeros}"
                  + (f" ({report.zeros_kept / report.source_zeros:.2%})" if report.source_zeros else ""))
    table.add_row("IR sparsity (all weights)", f"{report.ir_sparsity:.2%}")
    if report.sparse_decompression:
        sd = report.sparse_decompression
        table.add_row("sparse decompression", f"rate {sd['rate']} written to runtime_config.json; "
                      + ("can engage on this CPU" if sd["can_engage_here"] else f"will not engage: {sd['why_not']}"))
    table.add_row("time", f"{report.seconds:.1f} s")
    return table


def runtime_adapter_lines(report) -> str:
    """How to apply an exported runtime adapter with openvino_genai (alpha as the record says)."""
    ra = report.runtime_adapter
    ranks = f", ranks per block {ra['ranks']}" if ra.get("ranks") else ""
    return (f"runtime LoRA adapter ({ra['method']}, {ra['layers']} layers{ranks}; lora_alpha / r = "
            f"{ra['peft_scaling']:g} is in lora_B) written to {report.output}/{ra['file']}; sqft-ov eval and bench "
            f"apply it (--no-adapter: the bare base). In openvino_genai:\n"
            f"  adapter = openvino_genai.Adapter(\"{report.output}/{ra['file']}\")\n"
            f"  pipe = openvino_genai.LLMPipeline(\"{report.output}\", \"CPU\", "
            f"adapters=openvino_genai.AdapterConfig(adapter, {ra['alpha']:g}))")


def finetune_table(result, label: str) -> Table:
    rows = [("steps", str(result.steps))]
    if result.train_loss:
        rows.append(("train loss (first -> last)", f"{result.train_loss[0]:.4f} -> {result.train_loss[-1]:.4f}"))
    if getattr(result, "distill_loss", None):  # T^2 x KL to the teacher per response token, in the train loss
        rows.append(("distill loss (first -> last)", f"{result.distill_loss[0]:.4f} -> {result.distill_loss[-1]:.4f}"))
    rows.append(("validation loss", "-" if result.eval_loss is None else f"{result.eval_loss:.4f}"))
    return field_table(f"{label} adapter: {result.output}", rows)


def merge_table(report) -> Table:
    return field_table(f"merged {report.method}: {report.output}", [
        ("precision", report.precision),
        ("ranks", str(report.ranks) if report.ranks else "fixed"),
        ("base zeros kept", f"{report.base_zeros_kept}/{report.base_zeros} ({report.zeros_kept_share:.2%})"),
        ("max |logit| trained vs merged", f"{report.max_logit_diff:.3g}")])


def eval_table(report) -> Table:
    loss = "-" if report.response_loss is None else f"{report.response_loss:.4f} ({report.response_tokens} tokens)"
    rows = [("engine", report.engine), ("examples", str(report.examples))]
    if report.exact_match is not None:  # a generation metric: exact | contains
        rows += [("exact match" if report.metric == "exact" else report.metric,
                  f"{report.exact_match:.2%} ({report.correct}/{report.examples})")]
        numeric = report.examples if report.numeric is None else report.numeric  # None: a report from before metrics
        if numeric < report.examples:
            rows += [("scored on", f"final '####' number ({numeric}), normalised text ({report.examples - numeric})")]
        rows += [("no '####' answer", str(report.no_answer))] * bool(numeric)
    else:
        rows += [("metric", "loss (teacher-forced, nothing generated)")]
    rows += [("response loss", loss)]
    if getattr(report, "runtime_adapter", None):
        rows += [("runtime adapter", f"{report.runtime_adapter['file']} (alpha {report.runtime_adapter['alpha']:g})"
                  + ("; response loss not computed: optimum-intel cannot apply it"
                     if "response_loss" in report.runtime_adapter else ""))]
    if report.perplexity is not None:
        rows += [("perplexity", f"{report.perplexity:.3f}")]
    return field_table(f"eval {report.model}" + (f" + {report.adapter}" if report.adapter else ""),
                       rows + [("time", f"{report.seconds:.1f} s")])


def eval_samples(report, show: int) -> list[str]:
    lines = []
    for sample in report.samples[:show]:
        mark = "[green]ok[/green]" if sample["correct"] else "[red]wrong[/red]"
        lines.append(f"{mark} expected {sample['reference']}, generated {sample['generated'].strip()!r}")
    return lines


def deployments_table(rows, title: str, decode: dict | None = None, reference=None, paths: bool = False) -> Table:
    table = Table(title=title)
    columns = ["method", "accuracy", "vs LoRA", "precision", "merged", "sparsity", "decode tok/s"]
    for col in columns + (["deployed model"] if paths else []):
        table.add_column(col, justify="right" if col in ("accuracy", "vs LoRA", "sparsity", "decode tok/s") else "left")
    for r in rows:
        acc = r.accuracy
        rel = "-" if reference is None or acc is None or not reference else f"{acc / reference:.1%}"
        speed = (decode or {}).get(r.label)
        where = str(r.model) + (f" + {r.adapter.name}" if r.adapter else "")
        table.add_row(r.label, "-" if acc is None else f"{acc:.1%}", rel, r.precision,
                      "-" if r.method == "none" else ("yes" if r.merged else "no"), f"{r.sparsity:.1%}",
                      "-" if speed is None else f"{speed:.0f}", *([where] if paths else []))
    return table


def bench_tables(report) -> list[Table]:
    """`sqft-ov bench`'s speed and resource tables (a `BenchResult` or its JSON form)."""
    from sqft_ov.measure.bench.report import RESOURCE_COLUMNS, SPEED_COLUMNS, rows

    speed, resources = rows(report)
    tables = []
    for title, columns, data in (("speed", SPEED_COLUMNS, speed), ("resources", RESOURCE_COLUMNS, resources)):
        table = Table(title=f"sqft-ov bench: {title}")
        for i, column in enumerate(columns):
            table.add_column(column, justify="left" if i < 2 or column.startswith("Fully") else "right")
        for row in data:
            table.add_row(*row)
        tables.append(table)
    return tables


def _tune_status(row: dict) -> str:
    if row.get("error"):
        return f"[red]{row['error']}"
    return "[yellow]" + "; ".join(row["flags"]) if row["flags"] else "ok"


def tune_settings_table(report) -> Table:
    from sqft_ov.measure.tune.report import as_dict, ratio_text

    report = as_dict(report)
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
                      ratio_text(row.get("decode_ratio")), ratio_text(row.get("prefill_ratio")),
                      f"{row['max_logit_diff']:.3g}" if row.get("max_logit_diff") is not None else "-",
                      f"{row['top1_agreement']:.0%}" if row.get("top1_agreement") is not None else "-",
                      _tune_status(row))
    return table


def profile_table(profile: dict, title: str, limit: int = 8) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("node type", "kernel", "nodes", "ms per step", "share"):
        table.add_column(column, justify="left" if column in ("node type", "kernel") else "right")
    for row in profile["by_node_type"][:limit]:
        table.add_row(row["node_type"], row["exec_type"], str(row["count"]), f"{row['ms']:.2f}", f"{row['share']:.1%}")
    table.add_row("[dim]outside the nodes", "", "", f"[dim]{profile['outside_graph_ms']:.2f}", "")
    return table


def export_grid_table(result) -> Table:
    """`sqft-ov tune --export-grid`'s table (an `ExportGridResult` or its JSON form)."""
    from sqft_ov.measure.tune.report import as_dict, ratio_text

    result = as_dict(result)
    table = Table(title=f"export grid of {result['model']} (each × {result['baseline']}, interleaved)",
                  title_justify="left")
    for column in ("#", "export", "size MB", "decode tok/s", "decode ×", "prefill ×", "max |Δlogit| vs FP16",
                   "top-1 = FP16", "status"):
        table.add_column(column, justify="left" if column in ("export", "status") else "right", overflow="fold")
    for i, row in enumerate(result["rows"], 1):
        table.add_row(str(i), row["name"], f"{row['size_bytes'] / 1e6:.0f}" if row.get("size_bytes") else "-",
                      f"{row['decode_tokens_per_s']:.1f}" if row.get("decode_tokens_per_s") else "-",
                      ratio_text(row.get("decode_ratio")), ratio_text(row.get("prefill_ratio")),
                      f"{row['max_logit_diff']:.3g}" if row.get("max_logit_diff") is not None else "-",
                      f"{row['top1_agreement']:.0%}" if row.get("top1_agreement") is not None else "-",
                      f"[red]{row['error']}" if row.get("error") else "ok")
    return table


def tune_renderables(result) -> list:
    """What `sqft-ov tune` prints for a runtime-property search: settings, the best, and the profiles."""
    from sqft_ov.measure.tune.report import as_dict, best_line, profile_lines

    result = as_dict(result)
    out = [tune_settings_table(result), best_line(result)]
    for name in ("current", "best"):
        profile = (result.get("profile") or {}).get(name)
        if isinstance(profile, dict):
            out.append(profile_table(profile, f"one decode step, {name} configuration"))
            out.extend(profile_lines(profile))
    return out


def applied_line(path, written: dict | None) -> str:
    if written is None:
        return "--apply: nothing to write, the current configuration is the best"
    plain = [k for k, ok in written["plain_loaders_apply"].items() if ok]
    return (f"applied: {path}/runtime_config.json now holds {written['runtime_config']}; plain OVModelForCausalLM "
            f"/ LLMPipeline loads also pick up {plain or 'none of them'} from the IR"
            + loader_lines(written.get("pass_to_loaders", [])))


def loader_lines(arguments: list[str]) -> str:
    """What to pass plain loaders for the properties OpenVINO does not read from the IR (empty if none)."""
    if not arguments:
        return ""
    return "\nOpenVINO does not read these from the IR: pass them to plain loaders (sqft-ov's own do):\n" + "\n".join(
        f"  {line}" for line in arguments)


def quickstart_table(result, title: str) -> Table:
    """The quickstart's rows, one per method: accuracy as mean (min–max over seeds) where trained several times."""
    from sqft_ov.quickstart.table_text import accuracy_text, decode_ratio_text, decode_text, interval_text, ratio_text

    table = Table(title=title)
    for col in ("method", "accuracy", "95 % interval", "vs LoRA (95 %)", "− LoRA (paired 95 %)", "precision", "merged",
                "sparsity", "size MiB", "decode tok/s (min–max)", "decode ÷ LoRA (paired)"):
        table.add_column(col, justify="left" if col in ("method", "precision", "merged") else "right")
    for row in result.table_rows():
        size = "-" if row["size_mib"] is None else f"{row['size_mib']:.1f}"
        table.add_row(row["method"], accuracy_text(row), interval_text(row), ratio_text(row),
                      interval_text(row, "difference_to_lora_ci95"), row["precision"],
                      row["merged"], f"{row['sparsity']:.1%}", size, decode_text(row), decode_ratio_text(row))
    return table


def latency_table(table) -> Table:
    """The measured points of a latency table (`sqft_ov.io.latency_table.LatencyTable`), largest widths first."""
    out = Table(title=f"decode latency: {table.where} ({table.machine.get('cpu')})")
    for col in ("MLP width", "KV groups", "ms / token", "IQR ms", "vs largest"):
        out.add_column(col, justify="right")
    reference = table.points[table.reference]
    for point in table.record["points"]:
        stats = point.get("stats_ms", {})
        out.add_row(str(point["mlp"]), str(point["kv_groups"]), f"{point['ms_per_token']:.3f}",
                    f"{stats['iqr']:.3f}" if "iqr" in stats else "", f"{point['ms_per_token'] / reference:.2f}x")
    return out
