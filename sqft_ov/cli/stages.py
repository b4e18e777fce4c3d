"""Commands of the pipeline's stages: tiny-model, sparsify, export, finetune, search, merge, importance."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import typer

from sqft_ov.adapters.config import ADAPTER_CONFIG, FinetuneConfig
from sqft_ov.adapters.methods import method_for
from sqft_ov.cli import tables
from sqft_ov.cli.app import app, console, err_console, progress_bar, renamed
from sqft_ov.cli.options import option_for
from sqft_ov.config_fields import field_help
from sqft_ov.errors import ConfigError, warn_deprecated
from sqft_ov.io.sft_data import SFTFormat
from sqft_ov.stages.export import DEFAULT_GROUP_SIZE, ExportConfig

TRUST_REMOTE_CODE = field_help(FinetuneConfig, "trust_remote_code")  # also for commands without a config field
# SFTFormat's fields as the training commands (finetune, importance) word them; eval words them for scoring
TRAINING_FORMAT = {"prompt_field": "Field with the prompt.",
                   "response_field": "Field with the response (the loss is on it only).",
                   "chat_template": "Wrap prompts in the tokenizer's chat template.",
                   "max_length": "Longest tokenized example."}


def format_option(name: str) -> Any:
    """The option of SFTFormat field `name` for a command that trains on the data."""
    return option_for(SFTFormat, name, help=TRAINING_FORMAT[name])


@app.command("tiny-model")
def tiny_model(
    model: Path = typer.Argument(..., metavar="MODEL", help="Folder to write the model to (Hugging Face layout)."),
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
    overwrite: bool = typer.Option(False, help="Replace MODEL if it exists."),
) -> None:
    """Build a tiny random causal LM with a locally trained tokenizer: no download needed."""
    from sqft_ov.quickstart.tiny import TinyModelConfig, build_tiny_model

    cfg = TinyModelConfig(arch=arch, layers=layers, hidden=hidden, intermediate=intermediate, heads=heads,
                          kv_heads=kv_heads, vocab=vocab, max_positions=max_positions, seed=seed, dtype=dtype)
    path = build_tiny_model(model, cfg, overwrite)
    console.print(f"tiny {arch} model written to {path}")


@app.command()
def sparsify(
    model: Path = typer.Argument(..., help="Hugging Face model folder, .gguf file, or smollm2."),
    sparse: Path = typer.Argument(..., metavar="SPARSE", help="Folder for the sparse model."),
    # SparsityConfig's fields, written out: its module imports torch, which `sqft-ov --help` does not load
    # (tests/test_config_source.py checks them against the fields)
    method: str = typer.Option("wanda", help="wanda | magnitude"),
    ratio: Optional[float] = typer.Option(None, show_default="0.5; N:M patterns: 1 - N/M",
                                          help="Share of each layer's weights to zero."),
    pattern: str = typer.Option("unstructured", help="unstructured, or N:M such as 2:4"),
    dataset: Optional[Path] = typer.Option(None, show_default="none (Wanda needs one)",
                                           help="Calibration text: .txt (a sample a line), .json/.jsonl/.csv/.parquet."),
    calibration: Optional[Path] = typer.Option(None, hidden=True),  # the old name of --dataset
    text_field: list[str] = typer.Option([], show_default="the text column, or the only one",
                                         help="Field(s) holding the text; repeat to join several."),
    num_samples: int = typer.Option(128, help="Calibration sequences."),
    seq_len: int = typer.Option(512, help="Tokens per calibration sequence."),
    overwrite: bool = typer.Option(False, help="Replace SPARSE if it exists."),
    trust_remote_code: bool = typer.Option(False, help=TRUST_REMOTE_CODE),
) -> None:
    """Zero the smallest-scoring weights of the decoder's linear layers (Wanda or magnitude)."""
    from sqft_ov.stages.sparsify import SparsityConfig, sparsify_folder

    calibration = renamed(dataset, calibration, "--calibration", "--dataset")
    config = SparsityConfig(method=method, ratio=ratio, pattern=pattern)
    with progress_bar() as on_progress:
        report = sparsify_folder(model, sparse, config, calibration, tuple(text_field), num_samples, seq_len,
                                 overwrite, trust_remote_code, on_progress)
    console.print(tables.sparsity_table(report))
    console.print(f"sparse model written to {Path(sparse).absolute()} (per-layer figures in sparsity.json)")


@app.command()
def export(
    model: Path = typer.Argument(..., help="Hugging Face model folder, .gguf file, or smollm2; or a lora finetune "
                                 "output: its base's IR + the adapter genai applies at runtime (IR/adapter)."),
    ir: Path = typer.Argument(..., metavar="IR", help="Folder for the OpenVINO IR."),
    weight_format: str = option_for(ExportConfig, "weight_format"),
    sym: Optional[bool] = option_for(ExportConfig, "sym", "--sym/--asym",
                                     show_default="asym, or a merged model's trained grid"),
    group_size: Optional[int] = option_for(ExportConfig, "group_size",
                                           show_default=f"{DEFAULT_GROUP_SIZE}, or a merged model's trained grid"),
    group_size_fallback: str = option_for(ExportConfig, "group_size_fallback"),
    all_layers: bool = option_for(ExportConfig, "all_layers"),
    ratio: float = option_for(ExportConfig, "ratio"),
    backup_precision: Optional[str] = option_for(ExportConfig, "backup_precision", show_default="int8_asym, NNCF's"),
    sensitivity_metric: Optional[str] = option_for(
        ExportConfig, "sensitivity_metric",
        show_default="NNCF's: max_activation_variance with --dataset, else weight_quantization_error"),
    dataset: Optional[Path] = typer.Option(
        None, show_default="none (needed by int8-w8a8 and data-aware int4)",
        help="Calibration text for int8-w8a8 static quantization and data-aware int4 (--awq, --scale-estimation, "
             "--gptq, --lora-correction, --ratio below 1): .txt (a sample a line), .json/.jsonl/.csv/.parquet."),
    calibration: Optional[Path] = typer.Option(None, hidden=True),  # the old name of --dataset
    awq: bool = option_for(ExportConfig, "awq"),
    scale_estimation: bool = option_for(ExportConfig, "scale_estimation"),
    gptq: bool = option_for(ExportConfig, "gptq"),
    lora_correction: bool = option_for(ExportConfig, "lora_correction"),
    text_field: list[str] = typer.Option([], show_default="the text column, or the only one",
                                         help="Field(s) holding the calibration text."),
    num_samples: int = option_for(ExportConfig, "num_samples"),
    seq_len: int = option_for(ExportConfig, "seq_len"),
    sparse_rate: Optional[float] = option_for(ExportConfig, "sparse_rate", show_default="none: not written"),
    sparse_format: Optional[str] = option_for(ExportConfig, "sparse_format", show_default="none: dense MatMuls"),
    fuse_projections: Optional[bool] = option_for(ExportConfig, "fuse_projections",
                                                  "--fuse-projections/--no-fuse-projections",
                                                  show_default="on, but not with a runtime adapter or int8-w8a8"),
    device: Optional[str] = option_for(ExportConfig, "device", show_default="none: not compiled"),
    chat_template: str = option_for(ExportConfig, "chat_template"),
    sub_adapter: Optional[Path] = typer.Option(None, show_default="none; NLS: the largest ranks", help="A finetune "
                                               "output MODEL: CONFIG.json from search (NLS adapters)."),
    base: Optional[Path] = typer.Option(None, show_default="the one the adapter records",
                                        help="A finetune output MODEL: the base model, if it moved since training."),
    overwrite: bool = typer.Option(False, help="Replace IR if it exists."),
    trust_remote_code: bool = option_for(ExportConfig, "trust_remote_code"),
) -> None:
    """Export to an OpenVINO IR folder (model with KV cache, tokenizer IRs) that keeps every zero; a lora finetune
    output as its base's IR + a runtime adapter for openvino_genai (SQFT unmerged)."""
    from sqft_ov.stages.export import export as run_export
    from sqft_ov.stages.export_adapter import export_adapter

    is_adapter = (model / ADAPTER_CONFIG).is_file()
    if not is_adapter and (sub_adapter is not None or base is not None):
        raise ConfigError(f"--sub-adapter and --base apply to a finetune output folder ({ADAPTER_CONFIG}); {model} "
                          "is not one")
    calibration = renamed(dataset, calibration, "--calibration", "--dataset")
    config = ExportConfig(weight_format=weight_format, sym=sym, group_size=group_size,
                          group_size_fallback=group_size_fallback, all_layers=all_layers, ratio=ratio,
                          backup_precision=backup_precision, sensitivity_metric=sensitivity_metric,
                          calibration=str(calibration) if calibration else None, awq=awq,
                          scale_estimation=scale_estimation, gptq=gptq, lora_correction=lora_correction,
                          text_fields=tuple(text_field),
                          num_samples=num_samples, seq_len=seq_len, sparse_rate=sparse_rate,
                          sparse_format=sparse_format, fuse_projections=fuse_projections, device=device,
                          chat_template=chat_template, trust_remote_code=trust_remote_code)
    with err_console.status(f"exporting {model} to OpenVINO ({weight_format})"):
        report = (export_adapter(model, ir, config, sub_adapter, base, overwrite) if is_adapter
                  else run_export(model, ir, config, overwrite))
    console.print(tables.export_table(report))
    if report.runtime_adapter is not None:
        console.print(tables.runtime_adapter_lines(report), highlight=False, soft_wrap=True)
    if report.sparse_decompression.get("pass_to_loaders"):
        console.print(tables.loader_lines(report.sparse_decompression["pass_to_loaders"]).lstrip("\n"), highlight=False,
                      soft_wrap=True)


def precision_flag(bf16: bool, fp16: bool) -> str:
    """--bf16 / --fp16 (Trainer's flags) as FinetuneConfig's precision."""
    if bf16 and fp16:
        raise ConfigError("--bf16 and --fp16 exclude each other: choose one")
    return "bf16" if bf16 else "fp16" if fp16 else "fp32"


def int4_grid(method: str, int4_base: bool, sym: Optional[bool], legacy: Optional[bool]) -> Optional[str]:
    """FinetuneConfig.int4 from --int4-base and --sym/--asym (or the deprecated --int4-sym/--int4-asym)."""
    if legacy is not None:
        warn_deprecated("--int4-sym/--int4-asym", "--sym/--asym (lora: with --int4-base)")
        return "sym" if legacy else "asym"
    if sym is not None and not int4_base and method_for(method).int4_grid == "optional":
        raise ConfigError("--sym/--asym choose the INT4 grid, which lora trains on only with --int4-base")
    return ("sym" if sym else "asym") if int4_base or sym is not None else None


@app.command()
def finetune(
    model: Path = typer.Argument(..., help="Base model folder (e.g. the output of sparsify) or .gguf file."),
    data: Path = typer.Argument(..., help="Training data: .json/.jsonl/.csv/.parquet or a saved datasets folder."),
    adapter: Path = typer.Argument(..., metavar="ADAPTER", help="Folder for the trained adapter."),
    method: str = option_for(FinetuneConfig, "method"),
    rank: int = option_for(FinetuneConfig, "rank", note="without --nls"),
    nls: bool = option_for(FinetuneConfig, "nls"),
    rank_space: list[str] = option_for(FinetuneConfig, "rank_space", metavar="RANKS"),
    target_modules: list[str] = option_for(FinetuneConfig, "target_modules", metavar="NAMES"),
    int4_base: bool = typer.Option(False, "--int4-base", help="lora: train on the base snapped to NNCF's INT4 grid "
                                   "(QLoRA-style); qa-sparsepeft always trains on the grid."),
    sym: Optional[bool] = typer.Option(None, "--sym/--asym", show_default="asym",
                                       help="INT4 grid without / with zero points (qa-sparsepeft; lora with --int4-base)."),
    int4_legacy: Optional[bool] = typer.Option(None, "--int4-sym/--int4-asym", hidden=True),  # old --sym/--asym
    group_size: int = option_for(FinetuneConfig, "group_size", note=f"export's post-training default is "
                                 f"{DEFAULT_GROUP_SIZE}, as in optimum-cli"),
    prompt_field: str = format_option("prompt_field"),
    response_field: str = format_option("response_field"),
    chat_template: bool = format_option("chat_template"),
    max_length: int = format_option("max_length"),
    lora_alpha: Optional[float] = option_for(FinetuneConfig, "lora_alpha", show_default="2 x the largest rank"),
    lora_dropout: float = option_for(FinetuneConfig, "lora_dropout"),
    epochs: float = option_for(FinetuneConfig, "epochs"),
    max_steps: int = option_for(FinetuneConfig, "max_steps"),
    lr: float = option_for(FinetuneConfig, "lr"),
    range_lr: Optional[float] = option_for(FinetuneConfig, "range_lr", show_default="--lr"),
    batch_size: int = option_for(FinetuneConfig, "batch_size"),
    grad_accum: int = option_for(FinetuneConfig, "grad_accum"),
    seed: int = option_for(FinetuneConfig, "seed"),
    mlp_widths: str = option_for(FinetuneConfig, "mlp_widths", default="", show_default="none: fixed widths"),
    head_widths: str = option_for(FinetuneConfig, "head_widths", default="", show_default="none: fixed widths"),
    search_space: Optional[Path] = option_for(FinetuneConfig, "search_space", show_default="none"),
    eval_split: float = option_for(FinetuneConfig, "eval_split"),
    save_steps: int = option_for(FinetuneConfig, "save_steps"),
    bf16: bool = typer.Option(False, "--bf16", help="Hold the frozen base in bfloat16 and train with bf16 autocast "
                              "(half the base's memory; the trained tensors keep their dtype, merge works in float32)."),
    fp16: bool = typer.Option(False, "--fp16", help="As --bf16 with float16 (GPUs without bf16)."),
    gradient_checkpointing: bool = option_for(FinetuneConfig, "gradient_checkpointing", "--gradient-checkpointing"),
    device: str = option_for(FinetuneConfig, "device"),
    teacher: Optional[Path] = option_for(FinetuneConfig, "teacher", show_default="none: no distillation"),
    distill_weight: float = option_for(FinetuneConfig, "distill_weight"),
    temperature: float = option_for(FinetuneConfig, "temperature"),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint of an interrupted run."),
    overwrite: bool = typer.Option(False, help="Replace ADAPTER if it exists."),
    trust_remote_code: bool = option_for(FinetuneConfig, "trust_remote_code"),
) -> None:
    """Train mergeable adapters: LoRA, SparsePEFT or QA-SparsePEFT, optionally with NLS."""
    from sqft_ov.stages.finetune import finetune as run_finetune

    config = FinetuneConfig(
        method=method, rank=rank, nls=nls, rank_space=rank_space, target_modules=target_modules,
        int4=int4_grid(method, int4_base, sym, int4_legacy), group_size=group_size, lora_alpha=lora_alpha,
        lora_dropout=lora_dropout, data_format=SFTFormat(prompt_field, response_field, chat_template, max_length),
        epochs=epochs, max_steps=max_steps, lr=lr, range_lr=range_lr, batch_size=batch_size, grad_accum=grad_accum,
        seed=seed, eval_split=eval_split, save_steps=save_steps, trust_remote_code=trust_remote_code,
        mlp_widths=tuple(mlp_widths.replace(",", " ").split()), head_widths=tuple(head_widths.replace(",", " ").split()),
        search_space=str(search_space) if search_space else None, precision=precision_flag(bf16, fp16),
        gradient_checkpointing=gradient_checkpointing, device=device, teacher=str(teacher) if teacher else None,
        distill_weight=distill_weight, temperature=temperature)
    with progress_bar() as on_progress:
        result = run_finetune(model, data, adapter, config, resume=resume, overwrite=overwrite,
                              on_progress=on_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        label = f"{method}{' + NLS' if nls else ''}{' + elastic widths' if config.elastic else ''}"
        console.print(tables.finetune_table(result, label))


@app.command()
def search(
    adapter: Path = typer.Argument(..., metavar="ADAPTER", help="An NLS adapter folder written by finetune --nls."),
    strategy: str = typer.Option("hill-climb", help="max | median | min | most-activated | min-loss | hill-climb"),
    validation: Optional[Path] = typer.Option(None, show_default="the held-out split of the training data",
                                              help="Validation data."),
    budget: int = typer.Option(20, help="Most sub-adapters hill-climb evaluates."),
    save: Path = typer.Option(..., help="Where to write the chosen configuration (CONFIG.json)."),
    base: Optional[Path] = typer.Option(None, show_default="the one the adapter records",
                                        help="The base model, if it moved since training."),
    max_size: Optional[float] = typer.Option(None, show_default="no limit", help="Elastic widths: the largest share "
                                             "of the full decoder's weights the sub-network may keep (e.g. 0.7)."),
    max_latency: Optional[float] = typer.Option(None, show_default="no limit", help="Elastic widths: the most ms per "
                                                "decoded token the sub-network may take, as --latency-table predicts "
                                                "it."),
    latency_table: Optional[Path] = typer.Option(None, show_default="none", help="The table `sqft-ov latency` "
                                                 "measured for this adapter (alone: the chosen sub-network's "
                                                 "predicted ms per token is reported)."),
) -> None:
    """Pick a sub-network from a super-network: a rank per block (NLS) and, with elastic widths, an MLP
    width and number of KV groups per block."""
    from sqft_ov.stages.search import search as run_search

    result = run_search(adapter, strategy, validation, budget, base, max_size=max_size, max_latency=max_latency,
                        latency_table=latency_table)
    for line in result.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {line}", highlight=False, soft_wrap=True)
    record = json.loads((Path(adapter) / ADAPTER_CONFIG).read_text())
    result.save(save, record["rank_space"])
    loss = "" if result.validation_loss is None else f", validation loss {result.validation_loss:.4f}"
    chosen = [] if result.ranks is None else [f"ranks {result.ranks}"]
    if result.widths is not None:
        chosen.append(f"MLP widths {[w.mlp for w in result.widths]}, KV groups {[w.kv_groups for w in result.widths]}"
                      f" ({result.decoder_share:.0%} of the decoder's weights)")
    if result.predicted_ms_per_token is not None:
        chosen.append(f"predicted {result.predicted_ms_per_token:.4g} ms per decoded token")
    console.print(f"{strategy}: {'; '.join(chosen)}{loss} ({len(result.evaluated)} evaluated) -> {save}")


@app.command()
def merge(
    adapter: Path = typer.Argument(..., metavar="ADAPTER", help="Adapter folder written by finetune."),
    merged: Path = typer.Argument(..., metavar="MERGED", help="Folder for the merged model (Hugging Face layout)."),
    sub_adapter: Optional[Path] = typer.Option(None, show_default="none; NLS: the largest ranks", help="CONFIG.json "
                                               "from search (NLS / elastic-width adapters; widths cut the model)."),
    base: Optional[Path] = typer.Option(None, show_default="the one the adapter records",
                                        help="The base model, if it moved since training."),
    overwrite: bool = typer.Option(False, help="Replace MERGED if it exists."),
) -> None:
    """Merge the adapter into the weights at target precision (sparse float, or the trained INT4 grid)."""
    from sqft_ov.stages.merge import merge as run_merge

    report = run_merge(adapter, merged, sub_adapter, overwrite, base)
    if not method_for(report.method).masked and report.base_zeros:
        err_console.print(f"[yellow]warning:[/yellow] plain LoRA filled the base's zeros: only "
                          f"{report.zeros_kept_share:.2%} of them are left (use sparsepeft to keep them)")
    console.print(tables.merge_table(report))




@app.command()
def importance(
    model: Path = typer.Argument(..., help="Model folder (dense or sparse) or .gguf file."),
    data: Path = typer.Argument(..., help="Task data (prompt/response) whose loss gradients score the units."),
    ordered: Path = typer.Argument(..., metavar="ORDERED",
                                  help="Folder for the reordered model, search_space.json and importance.json."),
    # ImportanceConfig's fields, written out as sparsify's above (its module imports torch)
    keep: float = typer.Option(0.9, help="Share of a block's MLP importance its smallest width keeps (the space's lower boundary)."),
    keep_heads: float = typer.Option(0.9, help="The same for its KV groups (attention heads)."),
    choices: int = typer.Option(3, help="MLP widths per block in the derived search space."),
    multiple: int = typer.Option(32, help="MLP widths are multiples of this."),
    num_samples: int = typer.Option(64, help="Training examples whose gradients are accumulated."),
    batch_size: int = typer.Option(8, help="Examples per backward pass."),
    prompt_field: str = format_option("prompt_field"),
    response_field: str = format_option("response_field"),
    chat_template: bool = format_option("chat_template"),
    max_length: int = format_option("max_length"),
    overwrite: bool = typer.Option(False, help="Replace ORDERED if it exists."),
    trust_remote_code: bool = typer.Option(False, help=TRUST_REMOTE_CODE),
) -> None:
    """EFTNAS: score MLP channels and attention heads, reorder them most important first, derive the search space."""
    from sqft_ov.stages.importance import ImportanceConfig
    from sqft_ov.stages.importance import importance as run_importance

    config = ImportanceConfig(keep=keep, keep_heads=keep_heads, choices=choices, multiple=multiple,
                              num_samples=num_samples, batch_size=batch_size,
                              data_format=SFTFormat(prompt_field, response_field, chat_template, max_length))
    with err_console.status(f"scoring {model} on {num_samples} examples"):
        report = run_importance(model, data, ordered, config, overwrite, trust_remote_code)
    for i, (mlp, kv) in enumerate(zip(report.space.mlp, report.space.kv_groups)):
        console.print(f"block {i}: MLP widths {mlp}, KV groups {kv}")
    console.print(f"reordered model and search_space.json written to {Path(ordered).absolute()}")
