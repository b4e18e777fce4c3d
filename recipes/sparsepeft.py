"""SparsePEFT: mask-aware LoRA on a sparse base, merged into an equally sparse model, exported to OpenVINO.

SQFT's SparsePEFT row. The adapter's update is multiplied by the base weight's non-zero mask, so merging
keeps every zero: the deployment is one sparse IR (FP16 by default) with no adapter at inference time.
`--nls` trains elastic ranks (a super-adapter) and picks a sub-adapter with `search` before merging.

    sqft-ov run recipes/sparsepeft.py --model SPARSE_BASE --data TASK [--nls] [--out sparsepeft]
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from sqft_ov import (
    EvalConfig, ExportConfig, FinetuneConfig, SFTFormat, deployed_sparsity, evaluate, export, finetune, merge,
    search,
)
from sqft_ov.adapters.config import DEFAULT_RANK
from sqft_ov.recipe import (
    Bf16, DistillWeight, GradientCheckpointing, Teacher, Temperature, TrainDevice, distill_options, memory_options,
    BATCH_SIZE, LR, RANK_SPACE, STEPS, TARGETS, BatchSize, ChatTemplate, Data, Deployment, EvalLimit, Lr, Metric, Nls,
    Option, Out, Overwrite, Rank, RankSpace, Seed, SparseBase, Steps, Targets, Test, check_scoring, fresh_output,
    task_files, validation_file,
)


def recipe(
    model: SparseBase,
    data: Data,
    out: Out = Path("sparsepeft"),
    test: Test = None,
    nls: Nls = False,
    rank: Rank = DEFAULT_RANK,
    rank_space: RankSpace = RANK_SPACE,
    steps: Steps = STEPS,
    lr: Lr = LR,
    target_modules: Targets = TARGETS,
    batch_size: BatchSize = BATCH_SIZE,
    weight_format: Annotated[str, Option(help="IR weights: fp16 | int8 | int4.")] = "fp16",
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
                            method="sparsepeft", rank=rank, nls=nls,
                            rank_space=rank_space, max_steps=steps, lr=lr,
                            batch_size=batch_size, eval_split=0.05,
                            data_format=prompts, seed=seed, target_modules=target_modules)
    finetune(model, train, out / "adapter", config, on_progress=on_progress)
    sub_adapter = None
    if nls:
        sub_adapter = out / "sub_adapter.json"
        chosen = search(out / "adapter", "hill-climb", validation_file(data), budget=12)
        chosen.save(sub_adapter, list(config.rank_space))
    merge(out / "adapter", out / "merged", sub_adapter)
    ir = export(out / "merged", out / "ir", ExportConfig(weight_format=weight_format)).output
    scoring = EvalConfig(limit=eval_limit, data_format=prompts, loss=False, metric=metric)
    evaluation = evaluate(ir, test or train, scoring, on_progress)
    return [Deployment("SparsePEFT" + (" + NLS" if nls else ""), "sparsepeft", Path(ir), None, None, merged=True,
                       precision=weight_format, sparsity=deployed_sparsity(ir), evaluation=evaluation)]
