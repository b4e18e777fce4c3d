"""EFTNAS: the search space and the order of channels derived from first-order weight importance, then a
super-network trained and searched inside it, and the chosen sub-network cut out.

`importance` scores every MLP channel and KV group (|W * dL/dW| over task batches), reorders them most
important first and derives each block's space: from the full width down to the smallest width that keeps
`--keep` of the block's importance (`--choices` MLP widths; heads likewise with `--keep-heads`). Blocks whose
importance is concentrated get narrow lower bounds, the others stay wide. Training, search, cut, export and
evaluation are LoNAS's (`recipes/lonas.py`); OUT/search_space.json is the derived space, OUT/ir the
sub-network's INT4 IR, OUT/full/ir the full-width one.

    sqft-ov run recipes/eftnas.py --model DENSE_MODEL --data TASK [--out eftnas] [--steps 600]
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

from sqft_ov import FinetuneConfig, ImportanceConfig, SFTFormat, deployed_sparsity, importance
from sqft_ov.adapters.config import GRID_GROUP_SIZE
from sqft_ov.adapters.elastic import width_multiple
from sqft_ov.recipe import (
    Bf16, DistillWeight, GradientCheckpointing, Teacher, Temperature, TrainDevice, distill_options, memory_options,
    BATCH_SIZE, LR, RANK_SPACE, STEPS, BatchSize, ChatTemplate, Data, Deployment, EvalLimit, Lr, Metric, Option, Out,
    Overwrite, RankSpace, Seed, Steps, Test, check_scoring, fresh_output, task_files, validation_file,
)
from sqft_ov.recipes.lonas import GroupSize, MaxSize, Model, deploy_super_network

Keep = Annotated[float, Option(help="Share of a block's MLP importance its smallest width keeps.")]
KeepHeads = Annotated[float, Option(help="Share of a block's attention importance its fewest heads keep.")]
Choices = Annotated[int, Option(help="MLP widths per block in the derived space.")]


def recipe(
    model: Model,
    data: Data,
    out: Out = Path("eftnas"),
    test: Test = None,
    keep: Keep = 0.8,
    keep_heads: KeepHeads = 0.8,
    choices: Choices = 3,
    rank_space: RankSpace = RANK_SPACE,
    max_size: MaxSize = 0.7,
    steps: Steps = STEPS,
    lr: Lr = LR,
    batch_size: BatchSize = BATCH_SIZE,
    group_size: GroupSize = GRID_GROUP_SIZE,
    chat_template: ChatTemplate = False,
    seed: Seed = 42,
    bf16: Bf16 = False,
    gradient_checkpointing: GradientCheckpointing = False,
    device: TrainDevice = "auto",
    teacher: Teacher = None,
    distill_weight: DistillWeight = 1.0,
    temperature: Temperature = 1.0,
    eval_limit: EvalLimit = None,
    metric: Metric = "exact",
    overwrite: Overwrite = False,
    on_progress=None,
) -> list[Deployment]:
    train, test = task_files(data, test)
    prompts = SFTFormat(chat_template=chat_template)
    check_scoring(test or train, prompts, metric)
    out = fresh_output(out, overwrite, inputs=(model, data, test, teacher))
    # Derived widths are whole INT4 groups (and SIMD tiles of 32): the cut sub-network exports with group_size.
    scoring = ImportanceConfig(keep=keep, keep_heads=keep_heads, choices=choices, multiple=width_multiple(group_size),
                               data_format=prompts, seed=seed)
    ordered = importance(model, train, out / "ordered", scoring).output
    space = out / "search_space.json"
    shutil.copy2(ordered / "search_space.json", space)
    method = "sparsepeft" if deployed_sparsity(ordered) > 0 else "lora"  # a sparse base stays sparse (SQFT)
    config = FinetuneConfig(**memory_options(bf16, gradient_checkpointing, device),
                            **distill_options(teacher, distill_weight, temperature),
                            method=method, nls=True, rank_space=rank_space,
                            search_space=str(space), max_steps=steps, lr=lr, batch_size=batch_size,
                            eval_split=0.05, data_format=prompts, seed=seed)
    return deploy_super_network("EFTNAS", ordered, train, test, out, config, max_size, group_size, eval_limit,
                                on_progress, metric, validation_file(data))
