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

from sqft_ov import EvalConfig, FinetuneConfig, SFTFormat, deployed_sparsity, evaluate, finetune, search
from sqft_ov.recipe import (
    Bf16, DistillWeight, GradientCheckpointing, Teacher, Temperature, TrainDevice, distill_options, memory_options,
    BATCH_SIZE, LR, RANK_SPACE, STEPS, TARGETS, BatchSize, ChatTemplate, Data, Deployment, EvalLimit, Lr, Metric,
    Option, Out, Overwrite, RankSpace, Seed, SparseBase, Steps, Targets, Test, check_scoring, fresh_output, task_files,
    validation_file,
)
from sqft_ov.stages.search import STRATEGIES


def recipe(
    model: SparseBase,
    data: Data,
    out: Out = Path("shears"),
    test: Test = None,
    rank_space: RankSpace = RANK_SPACE,
    strategy: Annotated[str, Option(help=f"Sub-adapter search: {' | '.join(STRATEGIES)}.")] = "hill-climb",
    steps: Steps = STEPS,
    lr: Lr = LR,
    target_modules: Targets = TARGETS,
    batch_size: BatchSize = BATCH_SIZE,
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
    config = FinetuneConfig(**memory_options(bf16, gradient_checkpointing, device),
                            **distill_options(teacher, distill_weight, temperature),
                            method="lora", nls=True, rank_space=rank_space,
                            max_steps=steps, lr=lr, batch_size=batch_size, eval_split=0.05,
                            data_format=prompts, seed=seed, target_modules=target_modules)
    adapter = finetune(model, train, out / "adapter", config, on_progress=on_progress).output
    sub_adapter = out / "sub_adapter.json"
    search(adapter, strategy, validation_file(data), budget=12).save(sub_adapter, list(config.rank_space))
    scoring = EvalConfig(adapter=adapter, sub_adapter=sub_adapter, limit=eval_limit, data_format=prompts,
                         loss=False, metric=metric)
    evaluation = evaluate(model, test or train, scoring, on_progress)
    return [Deployment("Shears", "lora", Path(model).absolute(), adapter, sub_adapter, merged=False,
                       precision="fp32 + adapter", sparsity=deployed_sparsity(model), evaluation=evaluation)]
