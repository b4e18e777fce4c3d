"""The `sqft-ov` command: a thin Typer layer over the Python API, one command per pipeline stage."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from sqft_ov.errors import SqftError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Sparse, quantized, fine-tuned LLMs for OpenVINO (SQFT).")
console = Console()
err_console = Console(stderr=True)


def _quiet_libraries() -> None:
    """Keep the terminal for our own output: the stack logs a lot at import and export time."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # we draw our own progress with rich
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("torchao", "torch.utils._pytree", "nncf", "optimum", "transformers", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.disable(logging.INFO)  # NNCF resets its logger to INFO when imported, after the line above
    import warnings

    warnings.filterwarnings("ignore")


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                    console=err_console, transient=True)


def _sparsity_table(report, limit: int = 12) -> Table:
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


def _export_table(report) -> Table:
    table = Table(title=f"OpenVINO IR: {report.output}")
    table.add_column("field")
    table.add_column("value")
    for key, value in report.settings.items():
        table.add_row(key, str(value))
    storages = sorted({w["storage"] for w in report.weights.values()})
    table.add_row("weight storage", ", ".join(storages))
    table.add_row("source zeros kept in IR", f"{report.zeros_kept}/{report.source_zeros}"
                  + (f" ({report.zeros_kept / report.source_zeros:.2%})" if report.source_zeros else ""))
    table.add_row("IR sparsity (all weights)", f"{report.ir_sparsity:.2%}")
    if report.sparse_decompression:
        sd = report.sparse_decompression
        table.add_row("sparse decompression", f"rate {sd['rate']} written; "
                      + ("can engage on this CPU" if sd["can_engage_here"] else f"will not engage: {sd['why_not']}"))
    table.add_row("time", f"{report.seconds:.1f} s")
    return table


@app.command("tiny-model")
def tiny_model(
    output: Path = typer.Argument(..., help="Folder to write the model to (Hugging Face layout)."),
    arch: str = typer.Option("llama", help="llama | mistral | qwen2 | phi3"),
    layers: int = typer.Option(2, help="Decoder blocks."),
    hidden: int = typer.Option(128, help="Hidden size."),
    intermediate: int = typer.Option(256, help="MLP size."),
    heads: int = typer.Option(4, help="Attention heads."),
    kv_heads: int = typer.Option(2, help="Key/value heads (grouped-query attention)."),
    vocab: int = typer.Option(1024, help="BPE vocabulary size."),
    max_positions: int = typer.Option(512, help="Longest sequence (rotary embedding range)."),
    seed: int = typer.Option(0, help="Seed for the weights and the tokenizer corpus."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16 weights."),
    overwrite: bool = typer.Option(False, help="Replace OUTPUT if it exists."),
) -> None:
    """Build a tiny random causal LM with a locally trained tokenizer: no download needed."""
    from sqft_ov.tiny import TinyModelConfig, build_tiny_model

    cfg = TinyModelConfig(arch=arch, layers=layers, hidden=hidden, intermediate=intermediate, heads=heads,
                          kv_heads=kv_heads, vocab=vocab, max_positions=max_positions, seed=seed, dtype=dtype)
    path = build_tiny_model(output, cfg, overwrite)
    console.print(f"tiny {arch} model written to {path}")


@app.command()
def sparsify(
    model: Path = typer.Argument(..., help="Hugging Face model folder."),
    output: Path = typer.Argument(..., help="Folder for the sparse model."),
    method: str = typer.Option("wanda", help="wanda | magnitude"),
    ratio: Optional[float] = typer.Option(None, help="Share of each layer's weights to zero (default 0.5)."),
    pattern: str = typer.Option("unstructured", help="unstructured, or N:M such as 2:4"),
    calibration: Optional[Path] = typer.Option(None, help="Text data: .txt (a sample a line), .json/.jsonl/.csv/.parquet."),
    text_field: list[str] = typer.Option([], help="Field(s) holding the text; repeat to join several."),
    num_samples: int = typer.Option(128, help="Calibration sequences."),
    seq_len: int = typer.Option(512, help="Tokens per calibration sequence."),
    overwrite: bool = typer.Option(False, help="Replace OUTPUT if it exists."),
    trust_remote_code: bool = typer.Option(False, help="Allow the model folder's own Python code to run."),
) -> None:
    """Zero the smallest-scoring weights of the decoder's linear layers (Wanda or magnitude)."""
    from sqft_ov.sparsify import SparsityConfig, sparsify_folder

    config = SparsityConfig(method=method, ratio=ratio, pattern=pattern)
    with _progress() as progress:
        report = sparsify_folder(model, output, config, calibration, tuple(text_field), num_samples, seq_len,
                                 overwrite, trust_remote_code, progress)
    console.print(_sparsity_table(report))
    console.print(f"sparse model written to {Path(output).absolute()} (per-layer figures in sparsity.json)")


@app.command()
def export(
    model: Path = typer.Argument(..., help="Hugging Face model folder."),
    output: Path = typer.Argument(..., help="Folder for the OpenVINO IR."),
    weight_format: str = typer.Option("int4", help="fp16 | int8 | int4 | int8-w8a8"),
    sym: Optional[bool] = typer.Option(None, "--sym/--asym", help="Symmetric (no zero point) or asymmetric (default) INT weights."),
    group_size: Optional[int] = typer.Option(None, help="INT4 group size along the input dimension; -1 per channel. [default: 128, or a merged model's trained grid]"),
    group_size_fallback: str = typer.Option("error", help="error | adjust | ignore: for layers the group size does not divide."),
    all_layers: bool = typer.Option(False, help="INT4 also for the embeddings and lm_head (default: INT8, as NNCF and optimum-cli)."),
    calibration: Optional[Path] = typer.Option(None, help="Text data for int8-w8a8 static quantization."),
    text_field: list[str] = typer.Option([], help="Field(s) holding the calibration text."),
    num_samples: int = typer.Option(128, help="Calibration sequences (int8-w8a8)."),
    seq_len: int = typer.Option(512, help="Tokens per calibration sequence (int8-w8a8)."),
    sparse_rate: Optional[float] = typer.Option(None, help="Write CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE into the IR's runtime configuration."),
    device: Optional[str] = typer.Option(None, help="Compile the IR on this device once to check it (CPU, GPU ...)."),
    overwrite: bool = typer.Option(False, help="Replace OUTPUT if it exists."),
    trust_remote_code: bool = typer.Option(False, help="Allow the model folder's own Python code to run."),
) -> None:
    """Export to an OpenVINO IR folder (model with KV cache, tokenizer IRs) that keeps every zero."""
    from sqft_ov.export import ExportConfig
    from sqft_ov.export import export as run_export

    config = ExportConfig(weight_format=weight_format, sym=sym, group_size=group_size,
                          group_size_fallback=group_size_fallback, all_layers=all_layers,
                          calibration=str(calibration) if calibration else None, text_fields=tuple(text_field),
                          num_samples=num_samples, seq_len=seq_len, sparse_rate=sparse_rate, device=device,
                          trust_remote_code=trust_remote_code)
    with err_console.status(f"exporting {model} to OpenVINO ({weight_format})"):
        report = run_export(model, output, config, overwrite)
    console.print(_export_table(report))


@app.command()
def finetune(
    model: Path = typer.Argument(..., help="Base model folder (e.g. the output of sparsify)."),
    data: Path = typer.Argument(..., help="Training data: .json/.jsonl/.csv/.parquet or a saved datasets folder."),
    output: Path = typer.Argument(..., help="Folder for the trained adapter."),
    method: str = typer.Option("sparsepeft", help="lora | sparsepeft | qa-sparsepeft"),
    rank: int = typer.Option(16, help="LoRA rank (without --nls)."),
    nls: bool = typer.Option(False, help="Elastic ranks (Neural Low-rank adapter Search)."),
    rank_space: str = typer.Option("32 24 16", help="Ranks NLS samples from, e.g. --rank-space 32 24 16."),
    target_modules: str = typer.Option("q_proj k_proj v_proj up_proj down_proj",  # finetune.DEFAULT_TARGETS
                                       help="Linear layers that get adapters."),
    int4: Optional[bool] = typer.Option(None, "--int4-sym/--int4-asym", help="INT4 grid (qa-sparsepeft: default asym; lora: QLoRA-style base)."),
    group_size: int = typer.Option(64, help="INT4 group size."),
    prompt_field: str = typer.Option("prompt", help="Field with the prompt."),
    response_field: str = typer.Option("response", help="Field with the response (the loss is on it only)."),
    chat_template: bool = typer.Option(False, help="Wrap prompts in the tokenizer's chat template."),
    max_length: int = typer.Option(512, help="Longest tokenized example."),
    lora_alpha: Optional[float] = typer.Option(None, help="LoRA alpha [default: 2 x the (maximum) rank]."),
    epochs: float = typer.Option(1.0, help="Training epochs."),
    max_steps: int = typer.Option(-1, help="Stop after this many optimizer steps (overrides --epochs)."),
    lr: float = typer.Option(3e-4, help="Learning rate."),
    batch_size: int = typer.Option(4, help="Examples per device and step."),
    grad_accum: int = typer.Option(1, help="Gradient accumulation steps."),
    seed: int = typer.Option(42, help="Seed for data order, NLS sampling and initialisation."),
    eval_split: float = typer.Option(0.1, help="Share of the data held out for validation."),
    save_steps: int = typer.Option(50, help="Checkpoint every N steps (for --resume)."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint of an interrupted run."),
    overwrite: bool = typer.Option(False, help="Replace OUTPUT if it exists."),
    trust_remote_code: bool = typer.Option(False, help="Allow the model folder's own Python code to run."),
) -> None:
    """Train mergeable adapters: LoRA, SparsePEFT or QA-SparsePEFT, optionally with NLS."""
    from sqft_ov.finetune import FinetuneConfig
    from sqft_ov.finetune import finetune as run_finetune
    from sqft_ov.sft_data import SFTFormat

    config = FinetuneConfig(
        method=method, rank=rank, nls=nls, rank_space=_ints(rank_space, "--rank-space"),
        target_modules=tuple(target_modules.replace(",", " ").split()),
        int4=None if int4 is None else ("sym" if int4 else "asym"), group_size=group_size, lora_alpha=lora_alpha,
        data_format=SFTFormat(prompt_field, response_field, chat_template, max_length), epochs=epochs,
        max_steps=max_steps, lr=lr, batch_size=batch_size, grad_accum=grad_accum, seed=seed, eval_split=eval_split,
        save_steps=save_steps, trust_remote_code=trust_remote_code)
    result = run_finetune(model, data, output, config, resume=resume, overwrite=overwrite,
                          show_progress=sys.stderr.isatty())
    if int(os.environ.get("RANK", "0")) == 0:
        table = Table(title=f"{method}{' + NLS' if nls else ''} adapter: {result.output}")
        table.add_column("field")
        table.add_column("value")
        table.add_row("steps", str(result.steps))
        if result.train_loss:
            table.add_row("train loss (first -> last)", f"{result.train_loss[0]:.4f} -> {result.train_loss[-1]:.4f}")
        table.add_row("validation loss", "-" if result.eval_loss is None else f"{result.eval_loss:.4f}")
        console.print(table)


@app.command()
def search(
    output: Path = typer.Argument(..., help="An NLS adapter folder written by finetune --nls."),
    strategy: str = typer.Option("hill-climb", help="max | median | min | most-activated | min-loss | hill-climb"),
    validation: Optional[Path] = typer.Option(None, help="Validation data [default: the held-out split of the training data]."),
    budget: int = typer.Option(20, help="Most sub-adapters hill-climb evaluates."),
    save: Path = typer.Option(..., help="Where to write the chosen configuration (CONFIG.json)."),
    base: Optional[Path] = typer.Option(None, help="The base model, if it moved since training."),
) -> None:
    """Pick one rank per decoder block from an NLS super-adapter."""
    from sqft_ov.search import search as run_search

    result = run_search(output, strategy, validation, budget, base)
    record = json.loads((Path(output) / "sqft_adapter.json").read_text())
    result.save(save, record["rank_space"])
    loss = "" if result.validation_loss is None else f", validation loss {result.validation_loss:.4f}"
    console.print(f"{strategy}: ranks {result.ranks}{loss} ({len(result.evaluated)} evaluated) -> {save}")


@app.command()
def merge(
    output: Path = typer.Argument(..., help="Adapter folder written by finetune."),
    merged: Path = typer.Argument(..., help="Folder for the merged model (Hugging Face layout)."),
    sub_adapter: Optional[Path] = typer.Option(None, help="CONFIG.json from search (NLS adapters)."),
    base: Optional[Path] = typer.Option(None, help="The base model, if it moved since training."),
    overwrite: bool = typer.Option(False, help="Replace MERGED if it exists."),
) -> None:
    """Merge the adapter into the weights at target precision (sparse float, or the trained INT4 grid)."""
    from sqft_ov.merge import merge as run_merge

    report = run_merge(output, merged, sub_adapter, overwrite, base)
    if report.method == "lora" and report.base_zeros:
        err_console.print(f"[yellow]warning:[/yellow] plain LoRA filled the base's zeros: only "
                          f"{report.zeros_kept_share:.2%} of them are left (use sparsepeft to keep them)")
    table = Table(title=f"merged {report.method}: {report.output}")
    table.add_column("field")
    table.add_column("value")
    table.add_row("precision", report.precision)
    table.add_row("ranks", str(report.ranks) if report.ranks else "fixed")
    table.add_row("base zeros kept", f"{report.base_zeros_kept}/{report.base_zeros} ({report.zeros_kept_share:.2%})")
    table.add_row("max |logit| trained vs merged", f"{report.max_logit_diff:.3g}")
    console.print(table)


@app.command()
def bench(
    models: list[Path] = typer.Argument(..., help="IR folders, or Hugging Face folders (run in PyTorch)."),
    device: str = typer.Option("CPU", help="OpenVINO device for IR models: CPU, GPU, AUTO ..."),
    prompt_tokens: int = typer.Option(32, help="Prompt length in tokens (a different prompt each run)."),
    new_tokens: int = typer.Option(128, help="Tokens generated per run (greedy, EOS ignored)."),
    repeats: int = typer.Option(8, help="Measured runs per model, interleaved across models."),
    warmup: int = typer.Option(1, help="Uncounted rounds first."),
    baseline: int = typer.Option(1, help="Position of the baseline among MODELS, counting from 1."),
    sparse_rate: Optional[float] = typer.Option(None, help="CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE for IR models."),
    property: list[str] = typer.Option([], "--property", help="KEY=VALUE OpenVINO or genai property for IR models; repeatable."),
    adapter: list[str] = typer.Option([], "--adapter", help="Adapter for the k-th Hugging Face MODEL (PEFT or sqft-ov finetune folder); '-' for none."),
    torch_dtype: str = typer.Option("auto", help="PyTorch models: auto (the checkpoint's) | float32 | bfloat16 | float16."),
    bandwidth_gib: float = typer.Option(1.0, help="Buffer of the memory read-bandwidth test (GiB); 0 skips it."),
    json_file: Optional[Path] = typer.Option(None, "--json", help="Write the full report (every run) as JSON."),
    markdown_file: Optional[Path] = typer.Option(None, "--markdown", help="Write the tables as markdown."),
    plot_file: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG chart with error bars."),
    overwrite: bool = typer.Option(False, help="Replace existing report files."),
) -> None:
    """Benchmark deployed models side by side: TTFT, decode/prefill speed, memory, size, bandwidth use."""
    from sqft_ov.bench import BenchConfig, BenchModel
    from sqft_ov.bench import bench as run_bench
    from sqft_ov.bench.report import check_report_paths, context_lines, rich_tables, write_reports
    from sqft_ov.bench.worker import IR_FILE

    properties = _properties(property)
    config = BenchConfig(device=device, prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeats=repeats,
                         warmup=warmup, baseline=baseline, sparse_rate=sparse_rate, properties=properties,
                         torch_dtype=torch_dtype, bandwidth_gib=bandwidth_gib)
    check_report_paths([json_file, markdown_file, plot_file], overwrite)
    hf_models = [m for m in models if not (m / IR_FILE).is_file()]
    if len(adapter) > len(hf_models):
        raise SqftError(f"{len(adapter)} --adapter given but only {len(hf_models)} Hugging Face MODEL folder(s): "
                        "each --adapter pairs with the next Hugging Face folder, '-' for none")
    adapters = dict(zip(map(id, hf_models), (None if a == "-" else Path(a) for a in adapter)))
    with _progress() as progress:
        report = run_bench([BenchModel(m, adapters.get(id(m))) for m in models], config, progress)
    for table in rich_tables(report):
        console.print(table)
    for line in context_lines(report):
        console.print(line, highlight=False, markup=False)
    write_reports(report, json_file, markdown_file, plot_file, overwrite)
    failed = [m for m in report["models"] if not m["ok"]]
    for entry in failed:
        err_console.print(f"[red]failed:[/red] {entry['label']}: {entry['error']}", highlight=False, soft_wrap=True)
    if failed:
        sys.exit(1)


@app.command()
def tune(
    path: Path = typer.Argument(..., help="IR folder (runtime properties), or Hugging Face folder with --export-grid."),
    budget_minutes: float = typer.Option(20.0, help="Stop timing new settings after this long (the rest are listed as not measured)."),
    apply: bool = typer.Option(False, "--apply", help="Write the best setting into the IR folder's runtime configuration."),
    export_grid: bool = typer.Option(False, "--export-grid", help="Re-export MODEL over INT4 group size, sym/asym and INT8/INT4 embeddings, and time each."),
    out: Optional[Path] = typer.Option(None, help="--export-grid: folder for the exported IRs [default: PATH-export-grid]."),
    property: list[str] = typer.Option([], "--property", help="KEY=V1,V2 ...: try these values (replaces the default grid; repeatable). KV_CACHE_GROUP_SIZE sets key and value groups."),
    groups: str = typer.Option("-1 32 64 128", help="--export-grid: INT4 group sizes (-1: per channel)."),
    modes: str = typer.Option("sym asym", help="--export-grid: INT4 modes."),
    embeddings: str = typer.Option("int8 int4", help="--export-grid: embeddings/lm_head precision."),
    device: str = typer.Option("CPU", help="OpenVINO device."),
    prompt_tokens: int = typer.Option(32, help="Prompt length in tokens."),
    new_tokens: int = typer.Option(64, help="Tokens generated per run."),
    repeats: int = typer.Option(3, help="Measured runs per setting (the confirmation run uses twice as many)."),
    warmup: int = typer.Option(1, help="Uncounted rounds first."),
    max_logit_diff: Optional[float] = typer.Option(None, help="Flag settings whose logits move more than this from the f32 reference [default: 2x the current configuration's difference]."),
    min_gain: float = typer.Option(0.03, help="A setting is adopted only if it decodes at least 1 + this times faster."),
    profile: bool = typer.Option(True, help="Per-node profile of one decode step, current and best configuration."),
    json_file: Optional[Path] = typer.Option(None, "--json", help="Write the full report as JSON."),
    overwrite: bool = typer.Option(False, help="Replace an existing --json file or --export-grid folder."),
) -> None:
    """Find the fastest runtime configuration of an IR (or the fastest INT4 export of a model) that keeps its outputs."""
    from sqft_ov.output import check_output_file, write_file_atomic
    from sqft_ov.tune import TuneConfig
    from sqft_ov.tune import apply as apply_setting
    from sqft_ov.tune import report as tune_report
    from sqft_ov.tune.space import grid_from_options

    grid = None
    if property:
        values = {}
        for key, value in _properties(property).items():
            values[key] = [v for v in value.split(",") if v]
        grid = grid_from_options(values)
    config = TuneConfig(device=device, prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeats=repeats,
                        warmup=warmup, budget_minutes=budget_minutes, max_logit_diff=max_logit_diff,
                        min_gain=min_gain, grid=grid, profile=profile)
    if json_file:
        check_output_file(json_file, overwrite)
    if export_grid:
        from sqft_ov.tune.export_grid import export_grid as run_grid
        from sqft_ov.tune.export_grid import grid_points

        if apply or property:
            raise SqftError("--export-grid re-exports the model; --apply and --property tune an IR's runtime "
                            "properties: run tune on the chosen IR afterwards")
        points = grid_points(_ints(groups, "--groups"), modes.replace(",", " ").split(),
                             embeddings.replace(",", " ").split())
        target = out or path.expanduser().absolute().with_name(path.expanduser().absolute().name + "-export-grid")
        with _progress() as progress:
            result = run_grid(path, target, config, points, overwrite, progress)
        console.print(tune_report.grid_table(result))
        console.print(f"IRs and export_grid.json in {result['output']}", highlight=False)
    else:
        from sqft_ov.tune import tune as run_tune

        with _progress() as progress:
            result = run_tune(path, config, progress)
        console.print(tune_report.settings_table(result))
        console.print(tune_report.best_line(result), highlight=False)
        if result["profile"]:
            for name in ("current", "best"):
                profile_result = result["profile"][name]
                if isinstance(profile_result, dict):
                    console.print(tune_report.profile_table(profile_result, f"one decode step, {name} configuration"))
                    for line in tune_report.profile_lines(profile_result):
                        console.print(line, highlight=False)
        if apply:
            if result["best"]["setting"]:
                written = apply_setting(path, result["best"]["setting"], device)
                result["applied"] = written
                plain = [k for k, ok in written["plain_loaders_apply"].items() if ok]
                console.print(f"applied: {path}/runtime_config.json now holds {written['runtime_config']}; "
                              f"plain OVModelForCausalLM / LLMPipeline loads also pick up {plain or 'none of them'} "
                              "from the IR (the rest: pass runtime_config.json as ov_config / properties)",
                              highlight=False)
            else:
                console.print("--apply: nothing to write, the current configuration is the best", highlight=False)
    if json_file:
        write_file_atomic(json_file, json.dumps(result, indent=2) + "\n", overwrite)
        console.print(f"report written to {json_file}", highlight=False)


def _properties(items: list[str]) -> dict[str, str]:
    properties = {}
    for item in (word for text in items for word in text.split()):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SqftError(f"--property takes KEY=VALUE, got {item!r}")
        properties[key] = value
    return properties


@app.command("eval")
def eval_command(
    model: Path = typer.Argument(..., help="OpenVINO IR folder, or Hugging Face folder (run in PyTorch)."),
    data: Path = typer.Argument(..., help="Evaluation data: .json/.jsonl/.csv/.parquet or a saved datasets folder."),
    adapter: Optional[Path] = typer.Option(None, help="Adapter for a Hugging Face MODEL (PEFT or sqft-ov finetune folder)."),
    sub_adapter: Optional[Path] = typer.Option(None, help="CONFIG.json from search, for an NLS adapter."),
    prompt_field: str = typer.Option("prompt", help="Field with the prompt."),
    response_field: str = typer.Option("response", help="Field with the reference response (final answer after ####)."),
    chat_template: bool = typer.Option(False, help="Wrap prompts in the tokenizer's chat template."),
    max_length: int = typer.Option(512, help="Longest tokenized example (prompt + response)."),
    limit: Optional[int] = typer.Option(None, help="Evaluate the first N examples only."),
    batch_size: int = typer.Option(16, help="Examples per generation batch."),
    max_new_tokens: int = typer.Option(64, help="Longest generated answer."),
    device: str = typer.Option("CPU", help="OpenVINO device for an IR."),
    property: list[str] = typer.Option([], "--property", help="KEY=VALUE OpenVINO property for an IR; repeatable."),
    torch_dtype: str = typer.Option("float32", help="PyTorch models: float32 | bfloat16 | float16 | auto."),
    json_file: Optional[Path] = typer.Option(None, "--json", help="Write the report with every example as JSON."),
    show: int = typer.Option(3, help="Print this many example generations."),
    overwrite: bool = typer.Option(False, help="Replace the --json file if it exists."),
) -> None:
    """Exact match of the final answer (GSM8K-style '#### N') and response-token loss of a model on DATA."""
    from sqft_ov.evaluate import EvalConfig, evaluate
    from sqft_ov.output import check_output_file, write_file_atomic
    from sqft_ov.sft_data import SFTFormat

    if json_file is not None:
        check_output_file(json_file, overwrite)
    config = EvalConfig(adapter=adapter, sub_adapter=sub_adapter,
                        data_format=SFTFormat(prompt_field, response_field, chat_template, max_length), limit=limit,
                        batch_size=batch_size, max_new_tokens=max_new_tokens, device=device,
                        properties=_properties(property), torch_dtype=torch_dtype)
    with _progress() as progress:
        report = evaluate(model, data, config, progress)
    table = Table(title=f"eval {report.model}" + (f" + {report.adapter}" if report.adapter else ""))
    table.add_column("field")
    table.add_column("value")
    table.add_row("engine", report.engine)
    table.add_row("examples", str(report.examples))
    table.add_row("exact match", f"{report.exact_match:.2%} ({report.correct}/{report.examples})")
    table.add_row("no '####' answer", str(report.no_answer))
    table.add_row("response loss", "-" if report.response_loss is None else f"{report.response_loss:.4f} "
                  f"({report.response_tokens} tokens)")
    table.add_row("time", f"{report.seconds:.1f} s")
    console.print(table)
    for sample in report.samples[:show]:
        mark = "[green]ok[/green]" if sample["correct"] else "[red]wrong[/red]"
        console.print(f"{mark} expected {sample['reference']}, generated {sample['generated'].strip()!r}",
                      highlight=False)
    if json_file is not None:
        write_file_atomic(json_file, json.dumps(report.to_dict(), indent=2), overwrite)
        console.print(f"report written to {json_file}")


def _deployments_table(rows, title: str, decode: dict | None = None, reference=None, paths: bool = False) -> Table:
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


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def run(
    ctx: typer.Context,
    recipe: Optional[Path] = typer.Argument(None, help="A recipe file, e.g. recipes/sparsepeft.py."),
) -> None:
    """Run a recipe: `sqft-ov run recipes/<name>.py --model M --data D [options]` (--help after the file lists them)."""
    import functools
    import inspect

    from sqft_ov.recipe import load_recipe

    if recipe is None:
        console.print(ctx.get_help())
        raise typer.Exit(0 if "--help" in ctx.args or not ctx.args else 2)
    function = load_recipe(recipe)
    signature = inspect.signature(function, eval_str=True)  # the recipe's Annotated options, resolved in its module

    @functools.wraps(function)
    def command(**kwargs):
        takes_progress = "progress" in signature.parameters
        with _progress() as progress:
            rows = function(**kwargs, **({"progress": progress} if takes_progress else {}))
        rows = list(rows or [])
        console.print(_deployments_table(rows, f"recipe {recipe}", paths=True))

    command.__signature__ = signature.replace(parameters=[p for n, p in signature.parameters.items()
                                                          if n != "progress"])
    sub = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    sub.command(help=inspect.getmodule(function).__doc__)(command)
    sub(args=ctx.args, prog_name=f"sqft-ov run {recipe}")


@app.command()
def quickstart(
    out: Path = typer.Option(Path("sqft-ov-quickstart"), help="Folder for every model, IR and the results table."),
    fast: bool = typer.Option(False, help="Smoke test of every stage in a few minutes (weaker models, fewer steps)."),
    cache: Optional[Path] = typer.Option(None, help="Where the foundation model is cached [default: $SQFT_OV_CACHE or ~/.cache/sqft-ov]."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
) -> None:
    """SQFT's comparison end to end, offline: foundation model -> Wanda 50 % -> every recipe -> IR -> eval -> bench."""
    from sqft_ov.quickstart import RESULTS_JSON, RESULTS_MD
    from sqft_ov.quickstart import quickstart as run_quickstart

    with _progress() as progress:
        result = run_quickstart(out, fast, overwrite, cache, progress,
                                say=lambda line: progress.console.print(line, highlight=False))
    title = "SQFT on the embedded arithmetic task" + (" (--fast: smoke test, not the real figures)" if fast else "")
    console.print(_deployments_table(result.rows, title, result.decode, result.reference.accuracy))
    first = result.rows[0].evaluation
    console.print(f"accuracy: exact match of the final answer on {first.examples} held-out problems of the shifted "
                  f"downstream task; decode: sqft-ov bench, {result.plan.bench_new_tokens} new tokens, median of "
                  f"{result.plan.bench_repeats} runs; {result.seconds / 60:.1f} min in all", highlight=False)
    console.print(f"results: {result.out / RESULTS_MD}, {result.out / RESULTS_JSON}", highlight=False)


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.replace(",", " ").split())
    except ValueError:
        raise SqftError(f"{flag} takes whole numbers, e.g. {flag} 32 24 16") from None


_LIST_OPTIONS = ("--rank-space", "--target-modules", "--property", "--groups", "--modes", "--embeddings")


def _fold_list_options(argv: list[str]) -> list[str]:
    """`--rank-space 32 24 16` -> `--rank-space "32 24 16"`: the values run up to the next option."""
    out, i = [], 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] in _LIST_OPTIONS:
            j = i + 1
            while j < len(argv) and (not argv[j].startswith("-") or argv[j][1:].isdigit()):  # -1: a value
                j += 1
            out.append(" ".join(argv[i + 1:j]))
            i = j
            continue
        i += 1
    return out


@app.command()
def demo(
    out: Path = typer.Option(Path("sqft-ov-demo"), help="Folder for the demo's models and IR."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
) -> None:
    """Tiny Llama -> Wanda 50 % -> INT4 IR -> generation with openvino_genai, offline, in about a minute."""
    from sqft_ov.demo import run_demo

    with _progress() as progress:
        result = run_demo(out, overwrite, progress)
    console.print(_sparsity_table(result.sparsity, limit=4))
    console.print(_export_table(result.export))
    console.print(f"genai generates from {result.prompt!r}: {result.generated!r}")
    console.print("(random weights: the text is noise; the pipeline, sparsity and IR are real)")


def main() -> None:
    _quiet_libraries()
    try:
        app(args=_fold_list_options(sys.argv[1:]), prog_name="sqft-ov")
    except SqftError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
