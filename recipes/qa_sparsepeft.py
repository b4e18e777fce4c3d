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

from sqft_ov import (
    EvalConfig, ExportConfig, FinetuneConfig, SFTFormat, deployed_sparsity, evaluate, export, finetune, merge,
    search,
)
from sqft_ov.adapters.config import DEFAULT_RANK, GRID_GROUP_SIZE
from sqft_ov.recipe import (
    Bf16, DistillWeight, GradientCheckpointing, Teacher, Temperature, TrainDevice, distill_options, memory_options,
    BATCH_SIZE, LR, RANK_SPACE, STEPS, TARGETS, BatchSize, ChatTemplate, Data, Deployment, EvalLimit, Lr, Metric, Nls,
    Option, Out, Overwrite, Rank, RankSpace, Seed, SparseBase, Steps, Sym, Targets, Test, check_scoring, fresh_output,
    task_files, validation_file,
)


def recipe(
    model: SparseBase,
    data: Data,
    out: Out = Path("qa-sparsepeft"),
    test: Test = None,
    nls: Nls = False,
    rank: Rank = DEFAULT_RANK,
    rank_space: RankSpace = RANK_SPACE,
    sym: Sym = False,
    group_size: Annotated[int, Option(help="INT4 group size (fixed at training time).")] = GRID_GROUP_SIZE,
    steps: Steps = STEPS,
    lr: Lr = LR,
    target_modules: Targets = TARGETS,
    range_lr: Annotated[Optional[float], Option(
        show_default="--lr", help="Learning rate of the INT4 grid's ranges; 0 keeps the base's grid.")] = None,
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
                            method="qa-sparsepeft", rank=rank, nls=nls,
                            rank_space=rank_space, int4="sym" if sym else "asym",
                            group_size=group_size, max_steps=steps, lr=lr, range_lr=range_lr, batch_size=batch_size,
                            eval_split=0.05, data_format=prompts, seed=seed, target_modules=target_modules)
    finetune(model, train, out / "adapter", config, on_progress=on_progress)
    sub_adapter = None
    if nls:
        sub_adapter = out / "sub_adapter.json"
        chosen = search(out / "adapter", "hill-climb", validation_file(data), budget=12)
        chosen.save(sub_adapter, list(config.rank_space))
    merge(out / "adapter", out / "merged", sub_adapter)
    ir = export(out / "merged", out / "ir", ExportConfig(weight_format="int4")).output  # on the trained grid
    scoring = EvalConfig(limit=eval_limit, data_format=prompts, loss=False, metric=metric)
    evaluation = evaluate(ir, test or train, scoring, on_progress)
    return [Deployment("QA-SparsePEFT" + (" + NLS" if nls else ""), "qa-sparsepeft", Path(ir), None, None,
                       merged=True, precision=f"int4 {'sym' if sym else 'asym'} g{group_size}",
                       sparsity=deployed_sparsity(ir), evaluation=evaluation)]
