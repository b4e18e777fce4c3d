"""Shears: elastic-rank LoRA (NLS) on a sparse base, deployed unmerged.

The Shears paper's recipe and SQFT's "Shears" row: the sparse base stays as it is and the chosen
sub-adapter runs beside it (a plain LoRA update would fill the base's zeros if merged). NLS trains a
super-adapter whose ranks are sampled per decoder block at every step; `search` then picks one rank per
block on held-out loss.

    sqft-ov run recipes/shears.py --model SPARSE_BASE --data TASK [--out shears]
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sqft_ov import EvalConfig, FinetuneConfig, SFTFormat, deployed_sparsity, evaluate, finetune, search
from sqft_ov.recipe import (
    BatchSize, ChatTemplate, Data, Deployment, EvalLimit, Lr, Out, Overwrite, RankSpace, Seed, SparseBase, Steps,
    TARGETS, Targets, Test, fresh_output, task_files,
)
from sqft_ov.stages.search import STRATEGIES


def recipe(
    model: SparseBase,
    data: Data,
    out: Out = Path("shears"),
    test: Test = None,
    rank_space: RankSpace = "16 12 8",
    strategy: Annotated[str, typer.Option(help=f"Sub-adapter search: {' | '.join(STRATEGIES)}.")] = "hill-climb",
    steps: Steps = 600,
    lr: Lr = 3e-3,
    target_modules: Targets = TARGETS,
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
    config = FinetuneConfig(method="lora", nls=True, rank_space=tuple(int(r) for r in rank_space.split()),
                            max_steps=steps, lr=lr, batch_size=batch_size, eval_split=0.05,
                            data_format=prompts, seed=seed, target_modules=target_modules)
    adapter = finetune(model, train, out / "adapter", config, progress=progress).output
    sub_adapter = out / "sub_adapter.json"
    search(adapter, strategy, budget=12).save(sub_adapter, list(config.rank_space))
    scoring = EvalConfig(adapter=adapter, sub_adapter=sub_adapter, limit=eval_limit, data_format=prompts,
                         loss=False)
    evaluation = evaluate(model, test or train, scoring, progress)
    return [Deployment("Shears", "lora", Path(model).absolute(), adapter, sub_adapter, merged=False,
                       precision="fp32 + adapter", sparsity=deployed_sparsity(model), evaluation=evaluation)]
