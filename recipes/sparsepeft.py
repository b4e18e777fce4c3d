"""SparsePEFT: mask-aware LoRA on a sparse base, merged into an equally sparse model, exported to OpenVINO.

SQFT's SparsePEFT row. The adapter's update is multiplied by the base weight's non-zero mask, so merging
keeps every zero: the deployment is one sparse IR (FP16 by default) with no adapter at inference time.
`--nls` trains elastic ranks (a super-adapter) and picks a sub-adapter with `search` before merging.

    sqft-ov run recipes/sparsepeft.py --model SPARSE_BASE --data TASK [--nls] [--out sparsepeft]
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Optional

import typer

from sqft_ov.evaluate import EvalConfig, evaluate
from sqft_ov.export import ExportConfig, export
from sqft_ov.finetune import FinetuneConfig, finetune
from sqft_ov.merge import merge
from sqft_ov.output import check_output
from sqft_ov.recipe import Deployment, task_files
from sqft_ov.search import search
from sqft_ov.sparsify import deployed_sparsity


def recipe(
    model: Annotated[Path, typer.Option(help="Sparse base model folder (e.g. the output of sqft-ov sparsify).")],
    data: Annotated[Path, typer.Option(help="Training data, or a folder with train.jsonl and test.jsonl.")],
    out: Annotated[Path, typer.Option(help="Folder for the adapter, merged model and IR.")] = Path("sparsepeft"),
    test: Annotated[Optional[Path], typer.Option(help="Evaluation data [default: DATA/test.jsonl, else DATA].")] = None,
    nls: Annotated[bool, typer.Option(help="Elastic ranks, then a sub-adapter chosen by search.")] = False,
    rank: Annotated[int, typer.Option(help="LoRA rank (without --nls).")] = 16,
    rank_space: Annotated[str, typer.Option(help="Ranks NLS samples from.")] = "16 12 8",
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 600,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 3e-3,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = 16,
    weight_format: Annotated[str, typer.Option(help="IR weights: fp16 | int8 | int4.")] = "fp16",
    eval_limit: Annotated[Optional[int], typer.Option(help="Evaluate on the first N test examples.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    progress=None,
) -> list[Deployment]:
    train, test = task_files(data, test)
    out = check_output(out, overwrite)
    shutil.rmtree(out, ignore_errors=True)
    config = FinetuneConfig(method="sparsepeft", rank=rank, nls=nls,
                            rank_space=tuple(int(r) for r in rank_space.split()), max_steps=steps, lr=lr,
                            batch_size=batch_size, eval_split=0.05)
    finetune(model, train, out / "adapter", config, progress=progress)
    sub_adapter = None
    if nls:
        sub_adapter = out / "sub_adapter.json"
        search(out / "adapter", "hill-climb", budget=12).save(sub_adapter, list(config.rank_space))
    merge(out / "adapter", out / "merged", sub_adapter)
    ir = export(out / "merged", out / "ir", ExportConfig(weight_format=weight_format)).output
    evaluation = evaluate(ir, test or train, EvalConfig(limit=eval_limit), progress)
    return [Deployment("SparsePEFT" + (" + NLS" if nls else ""), "sparsepeft", Path(ir), None, None, merged=True,
                       precision=weight_format, sparsity=deployed_sparsity(ir), evaluation=evaluation)]
