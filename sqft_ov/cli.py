"""The `sqft-ov` command: a thin Typer layer over the Python API, one command per pipeline stage."""

from __future__ import annotations

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
    sym: bool = typer.Option(False, "--sym/--asym", help="Symmetric (no zero point) or asymmetric INT weights."),
    group_size: int = typer.Option(128, help="INT4 group size along the input dimension; -1 per channel."),
    group_size_fallback: str = typer.Option("error", help="error | adjust | ignore: for layers the group size does not divide."),
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
                          group_size_fallback=group_size_fallback,
                          calibration=str(calibration) if calibration else None, text_fields=tuple(text_field),
                          num_samples=num_samples, seq_len=seq_len, sparse_rate=sparse_rate, device=device,
                          trust_remote_code=trust_remote_code)
    with err_console.status(f"exporting {model} to OpenVINO ({weight_format})"):
        report = run_export(model, output, config, overwrite)
    console.print(_export_table(report))


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
        app()
    except SqftError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
