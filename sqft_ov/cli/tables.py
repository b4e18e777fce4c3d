"""Every table and summary line the CLI prints, in one place: commands compute, this module renders.

The benchmark's and tuner's own tables live with their reports (`stages.bench.report`,
`stages.tune.report`), which the benchmarks and quickstart also write; the CLI prints them from here.
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


def finetune_table(result, label: str) -> Table:
    rows = [("steps", str(result.steps))]
    if result.train_loss:
        rows.append(("train loss (first -> last)", f"{result.train_loss[0]:.4f} -> {result.train_loss[-1]:.4f}"))
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


def tune_renderables(result: dict) -> list:
    """What `sqft-ov tune` prints for a runtime-property search: settings, the best, and the profiles."""
    from sqft_ov.stages.tune import report as tune_report

    out = [tune_report.settings_table(result), tune_report.best_line(result)]
    for name in ("current", "best"):
        profile = (result.get("profile") or {}).get(name)
        if isinstance(profile, dict):
            out.append(tune_report.profile_table(profile, f"one decode step, {name} configuration"))
            out.extend(tune_report.profile_lines(profile))
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
    from sqft_ov.quickstart.comparison import accuracy_text, interval_text, percent_text, speed_text

    table = Table(title=title)
    for col in ("method", "accuracy", "95 % interval", "vs LoRA", "− LoRA (paired 95 %)", "precision", "merged",
                "sparsity", "size MiB", "decode tok/s"):
        table.add_column(col, justify="left" if col in ("method", "precision", "merged") else "right")
    for row in result.table_rows():
        size = "-" if row["size_mib"] is None else f"{row['size_mib']:.1f}"
        table.add_row(row["method"], accuracy_text(row), interval_text(row), percent_text(row["relative_to_lora"]),
                      interval_text(row, "difference_to_lora_ci95"), row["precision"],
                      row["merged"], f"{row['sparsity']:.1%}", size, speed_text(row["decode_tokens_per_s"]))
    return table
