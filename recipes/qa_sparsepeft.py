"""QA-SparsePEFT: train on the INT4 grid with a mask-aware adapter, merge to one sparse INT4 model, export.

SQFT's QA-SparsePEFT row. During training the merged weight fake_quant(W + M*B*A) is what the forward
sees (NNCF's INT4 quantizer with learnable ranges), so merging lands exactly on the trained INT4 grid:
the deployment is a sparse INT4 IR that needs neither the adapter nor a re-quantization. `--nls` trains
elastic ranks and picks a sub-adapter with `search` before merging.

    sqft-ov run recipes/qa_sparsepeft.py --model SPARSE_BASE --data TASK [--nls] [--out qa-sparsepeft]
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sqft_ov import (
    EvalConfig, ExportConfig, FinetuneConfig, SFTFormat, deployed_sparsity, evaluate, export, finetune, merge,
    search,
)
from sqft_ov.recipe import (
    BatchSize, ChatTemplate, Data, Deployment, EvalLimit, Lr, Nls, Out, Overwrite, Rank, RankSpace, Seed,
    SparseBase, Steps, TARGETS, Targets, Test, fresh_output, task_files,
)


def recipe(
    model: SparseBase,
    data: Data,
    out: Out = Path("qa-sparsepeft"),
    test: Test = None,
    nls: Nls = False,
    rank: Rank = 16,
    rank_space: RankSpace = "16 12 8",
    sym: Annotated[bool, typer.Option("--sym/--asym", help="INT4 grid without / with zero points.")] = False,
    group_size: Annotated[int, typer.Option(help="INT4 group size (fixed at training time).")] = 64,
    steps: Steps = 600,
    lr: Lr = 3e-3,
    target_modules: Targets = TARGETS,
    range_lr: Annotated[Optional[float], typer.Option(
        help="Learning rate of the INT4 grid's ranges; 0 keeps the base's grid [default: --lr].")] = None,
    batch_size: BatchSize = 16,
    chat_template: ChatTemplate = False,
    seed: Seed = 42,
    eval_limit: EvalLimit = None,
    overwrite: Overwrite = False,
    progress=None,
) -> list[Deployment]:
    train, test = task_files(data, test)
    out = fresh_output(out, overwrite, inputs=(model, data, test))
    prompts = SFTFormat(chat_template=chat_template)
    config = FinetuneConfig(method="qa-sparsepeft", rank=rank, nls=nls,
                            rank_space=tuple(int(r) for r in rank_space.split()), int4="sym" if sym else "asym",
                            group_size=group_size, max_steps=steps, lr=lr, range_lr=range_lr, batch_size=batch_size,
                            eval_split=0.05, data_format=prompts, seed=seed, target_modules=target_modules)
    finetune(model, train, out / "adapter", config, progress=progress)
    sub_adapter = None
    if nls:
        sub_adapter = out / "sub_adapter.json"
        search(out / "adapter", "hill-climb", budget=12).save(sub_adapter, list(config.rank_space))
    merge(out / "adapter", out / "merged", sub_adapter)
    ir = export(out / "merged", out / "ir", ExportConfig(weight_format="int4")).output  # on the trained grid
    evaluation = evaluate(ir, test or train, EvalConfig(limit=eval_limit, data_format=prompts, loss=False), progress)
    return [Deployment("QA-SparsePEFT" + (" + NLS" if nls else ""), "qa-sparsepeft", Path(ir), None, None,
                       merged=True, precision=f"int4 {'sym' if sym else 'asym'} g{group_size}",
                       sparsity=deployed_sparsity(ir), evaluation=evaluation)]
