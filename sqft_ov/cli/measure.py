"""Commands that measure deployed models: eval, bench, latency, tune."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from sqft_ov.cli import tables
from sqft_ov.adapters.config import split_list
from sqft_ov.cli.app import app, console, err_console, parse_ints, parse_properties, progress_bar
from sqft_ov.cli.options import option_for
from sqft_ov.errors import ConfigError
from sqft_ov.io.sft_data import SFTFormat
from sqft_ov.measure.bench.runner import BenchConfig
from sqft_ov.measure.latency import LatencyConfig
from sqft_ov.measure.tune.search import TuneConfig
from sqft_ov.stages.evaluate import EvalConfig


@app.command("eval")
def eval_command(
    model: Path = typer.Argument(..., help="OpenVINO IR folder, or Hugging Face folder / .gguf file (run in PyTorch)."),
    data: Path = typer.Argument(..., help="Evaluation data: .json/.jsonl/.csv/.parquet or a saved datasets folder."),
    adapter: Optional[Path] = option_for(EvalConfig, "adapter", show_default="none"),
    sub_adapter: Optional[Path] = option_for(EvalConfig, "sub_adapter", show_default="none; NLS: the largest ranks"),
    no_adapter: bool = option_for(EvalConfig, "no_adapter", "--no-adapter"),
    prompt_field: str = option_for(SFTFormat, "prompt_field", help="Field with the prompt (rows with a messages field "
                                   "are read as chat turns instead)."),
    response_field: str = option_for(SFTFormat, "response_field", help="Field with the reference response (--metric "
                                     "exact scores the number after #### where there is one)."),
    chat_template: bool = option_for(SFTFormat, "chat_template", help="Wrap prompts in the tokenizer's chat template."),
    max_length: int = option_for(SFTFormat, "max_length", help="Longest tokenized example (prompt + response)."),
    limit: Optional[int] = option_for(EvalConfig, "limit", show_default="all"),
    batch_size: int = option_for(EvalConfig, "batch_size"),
    max_new_tokens: int = option_for(EvalConfig, "max_new_tokens"),
    device: str = option_for(EvalConfig, "device"),
    property: list[str] = typer.Option([], "--property", show_default="none",
                                       help="KEY=VALUE OpenVINO property for an IR; repeatable."),
    torch_dtype: str = option_for(EvalConfig, "torch_dtype"),
    loss: bool = option_for(EvalConfig, "loss"),
    metric: str = option_for(EvalConfig, "metric"),
    json_file: Optional[Path] = typer.Option(None, "--json", show_default="none",
                                             help="Write the report with every example as JSON."),
    show: int = typer.Option(3, help="Print this many example generations."),
    overwrite: bool = typer.Option(False, help="Replace the --json file if it exists."),
) -> None:
    """Score a model's generations on DATA (--metric) and its response-token loss."""
    from sqft_ov.io.output import check_output_file, write_file_atomic
    from sqft_ov.stages.evaluate import evaluate

    if json_file is not None:
        check_output_file(json_file, overwrite)
    config = EvalConfig(adapter=adapter, sub_adapter=sub_adapter, no_adapter=no_adapter,
                        data_format=SFTFormat(prompt_field, response_field, chat_template, max_length), limit=limit,
                        batch_size=batch_size, max_new_tokens=max_new_tokens, device=device,
                        properties=parse_properties(property), torch_dtype=torch_dtype, loss=loss,
                        metric=metric)
    with progress_bar() as on_progress:
        report = evaluate(model, data, config, on_progress)
    console.print(tables.eval_table(report))
    for line in tables.eval_samples(report, show):
        console.print(line, highlight=False)
    if json_file is not None:
        write_file_atomic(json_file, json.dumps(report.to_dict(), indent=2), overwrite)
        console.print(f"report written to {json_file}")


@app.command()
def bench(
    models: list[Path] = typer.Argument(..., help="IR folders, or Hugging Face folders / .gguf files (run in PyTorch)."),
    device: str = option_for(BenchConfig, "device"),
    prompt_tokens: int = option_for(BenchConfig, "prompt_tokens"),
    new_tokens: int = option_for(BenchConfig, "new_tokens"),
    repeats: int = option_for(BenchConfig, "repeats"),
    warmup: int = option_for(BenchConfig, "warmup"),
    baseline: int = option_for(BenchConfig, "baseline"),
    sparse_rate: Optional[float] = option_for(BenchConfig, "sparse_rate",
                                              show_default="the IR's runtime configuration"),
    property: list[str] = typer.Option([], "--property", show_default="none",
                                       help="KEY=VALUE OpenVINO or genai property for IR models; repeatable."),
    adapter: list[str] = typer.Option([], "--adapter", show_default="none", help="Adapter for the k-th Hugging Face "
                                      "MODEL (PEFT or sqft-ov finetune folder); '-' for none; repeatable."),
    torch_dtype: str = option_for(BenchConfig, "torch_dtype"),
    no_adapter: bool = option_for(BenchConfig, "no_adapter", "--no-adapter"),
    bandwidth_gib: float = option_for(BenchConfig, "bandwidth_gib"),
    json_file: Optional[Path] = typer.Option(None, "--json", show_default="none",
                                             help="Write the full report (every run) as JSON."),
    markdown_file: Optional[Path] = typer.Option(None, "--markdown", show_default="none",
                                                 help="Write the tables as markdown."),
    plot_file: Optional[Path] = typer.Option(None, "--plot", show_default="none", help="Write a PNG chart with error bars."),
    overwrite: bool = typer.Option(False, help="Replace existing report files."),
) -> None:
    """Benchmark deployed models side by side: TTFT, decode/prefill speed, memory, size, bandwidth use."""
    from sqft_ov.io.ir import IR_FILE
    from sqft_ov.measure.bench import BenchModel
    from sqft_ov.measure.bench import bench as run_bench
    from sqft_ov.measure.bench.report import check_report_paths, context_lines, write_reports

    properties = parse_properties(property)
    config = BenchConfig(device=device, prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeats=repeats,
                         warmup=warmup, baseline=baseline, sparse_rate=sparse_rate, properties=properties,
                         torch_dtype=torch_dtype, bandwidth_gib=bandwidth_gib, no_adapter=no_adapter)
    check_report_paths([json_file, markdown_file, plot_file], overwrite)
    hf_models = [m for m in models if not (m / IR_FILE).is_file()]
    if len(adapter) > len(hf_models):
        raise ConfigError(f"{len(adapter)} --adapter given but only {len(hf_models)} Hugging Face MODEL folder(s): "
                          "each --adapter pairs with the next Hugging Face folder, '-' for none")
    adapters = dict(zip(map(id, hf_models), (None if a == "-" else Path(a) for a in adapter)))
    with progress_bar() as on_progress:
        report = run_bench([BenchModel(m, adapters.get(id(m))) for m in models], config, on_progress)
    for table in tables.bench_tables(report):
        console.print(table)
    for line in context_lines(report):
        console.print(line, highlight=False, markup=False)
    write_reports(report, json_file, markdown_file, plot_file, overwrite)
    failed = report.failed
    for entry in failed:
        err_console.print(f"[red]failed:[/red] {entry['label']}: {entry['error']}", highlight=False, soft_wrap=True)
    if failed:
        sys.exit(1)


@app.command()
def latency(
    adapter: Path = typer.Argument(..., metavar="ADAPTER", help="Finetune output trained with elastic widths "
                                   "(--mlp-widths / --head-widths / --search-space)."),
    table: Path = typer.Argument(..., metavar="TABLE", help="JSON file to write the latency table to."),
    new_tokens: int = option_for(LatencyConfig, "new_tokens"),
    prompt_tokens: int = option_for(LatencyConfig, "prompt_tokens"),
    repeats: int = option_for(LatencyConfig, "repeats"),
    warmup: int = option_for(LatencyConfig, "warmup"),
    device: str = option_for(LatencyConfig, "device"),
    property: list[str] = typer.Option([], "--property", show_default="none",
                                       help="KEY=VALUE OpenVINO or genai property for the timed IRs; repeatable."),
    weight_format: str = option_for(LatencyConfig, "weight_format"),
    group_size: Optional[int] = option_for(LatencyConfig, "group_size", show_default="the adapter's or export's"),
    base: Optional[Path] = typer.Option(None, show_default="the one the adapter records",
                                        help="The base model, if it moved since training."),
    overwrite: bool = typer.Option(False, help="Replace TABLE if it exists."),
) -> None:
    """Time the decode of every width choice of an elastic-width adapter (each exported to an IR) on this machine,
    for search --max-latency."""
    from sqft_ov.measure.latency import measure_latency

    config = LatencyConfig(new_tokens=new_tokens, prompt_tokens=prompt_tokens, repeats=repeats, warmup=warmup,
                           device=device, properties=parse_properties(property), weight_format=weight_format,
                           group_size=group_size)
    with progress_bar() as on_progress:
        result = measure_latency(adapter, table, config, base, overwrite, on_progress)
    console.print(tables.latency_table(result))
    console.print(f"latency table written to {Path(table).absolute()}", highlight=False, soft_wrap=True)


@app.command()
def tune(
    path: Path = typer.Argument(..., metavar="MODEL", help="IR folder (runtime properties), or Hugging Face folder / "
                                ".gguf file with --export-grid."),
    budget_minutes: float = option_for(TuneConfig, "budget_minutes"),
    apply: bool = typer.Option(False, "--apply", help="Write the best setting into the IR folder's runtime configuration."),
    export_grid: bool = typer.Option(False, "--export-grid", help="Re-export MODEL over INT4 group size, sym/asym and INT8/INT4 embeddings, and time each."),
    out: Optional[Path] = typer.Option(None, show_default="MODEL-export-grid",
                                       help="--export-grid: folder for the exported IRs."),
    property: list[str] = typer.Option([], "--property", show_default="the built-in grid", help="KEY=V1,V2 ...: try "
                                       "these values (replaces the default grid; repeatable). KV_CACHE_GROUP_SIZE sets "
                                       "key and value groups."),
    groups: list[str] = typer.Option(["-1", "32", "64", "128"], metavar="SIZES",
                                     help="--export-grid: INT4 group sizes (-1: per channel), comma-separated or repeated."),
    modes: list[str] = typer.Option(["sym", "asym"], metavar="MODES", help="--export-grid: INT4 modes."),
    embeddings: list[str] = typer.Option(["int8", "int4"], metavar="FORMATS",
                                         help="--export-grid: embeddings/lm_head precision."),
    device: str = option_for(TuneConfig, "device"),
    prompt_tokens: int = option_for(TuneConfig, "prompt_tokens"),
    new_tokens: int = option_for(TuneConfig, "new_tokens"),
    repeats: int = option_for(TuneConfig, "repeats"),
    warmup: int = option_for(TuneConfig, "warmup"),
    max_logit_diff: Optional[float] = option_for(TuneConfig, "max_logit_diff",
                                                 show_default="2x the current configuration's difference"),
    min_gain: float = option_for(TuneConfig, "min_gain"),
    profile: bool = option_for(TuneConfig, "profile"),
    json_file: Optional[Path] = typer.Option(None, "--json", show_default="none", help="Write the full report as JSON."),
    overwrite: bool = typer.Option(False, help="Replace an existing --json file or --export-grid folder."),
) -> None:
    """Find the fastest runtime configuration of an IR (or the fastest INT4 export of a model) that keeps its outputs."""
    from sqft_ov.io.output import check_output_file, write_file_atomic
    from sqft_ov.measure.tune import apply as apply_setting
    from sqft_ov.measure.tune.space import grid_from_options

    grid = None
    if property:
        values = {}
        for key, value in parse_properties(property).items():
            values[key] = [v for v in value.split(",") if v]
        grid = grid_from_options(values)
    config = TuneConfig(device=device, prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeats=repeats,
                        warmup=warmup, budget_minutes=budget_minutes, max_logit_diff=max_logit_diff,
                        min_gain=min_gain, grid=grid, profile=profile)
    if json_file:
        check_output_file(json_file, overwrite)
    if export_grid:
        from sqft_ov.measure.tune.export_grid import export_grid as run_grid
        from sqft_ov.measure.tune.export_grid import grid_points

        if apply or property:
            raise ConfigError("--export-grid re-exports the model; --apply and --property tune an IR's runtime "
                              "properties: run tune on the chosen IR afterwards")
        points = grid_points(parse_ints(groups, "--groups"), list(split_list(modes)), list(split_list(embeddings)))
        target = out or path.expanduser().absolute().with_name(path.expanduser().absolute().name + "-export-grid")
        with progress_bar() as on_progress:
            result = run_grid(path, target, config, points, overwrite, on_progress)
        console.print(tables.export_grid_table(result))
        console.print(f"IRs and export_grid.json in {result.output}", highlight=False)
    else:
        from sqft_ov.measure.tune import tune as run_tune

        with progress_bar() as on_progress:
            result = run_tune(path, config, on_progress)
        for item in tables.tune_renderables(result):
            console.print(item, highlight=False)
        if apply:
            written = apply_setting(path, result.best["setting"], device) if result.best["setting"] else None
            result.applied = written
            console.print(tables.applied_line(path, written), highlight=False, soft_wrap=True)
    if json_file:
        write_file_atomic(json_file, json.dumps(result.to_dict(), indent=2) + "\n", overwrite)
        console.print(f"report written to {json_file}", highlight=False)


