"""LoRA: the baseline every SQFT figure is measured against — a plain adapter on a sparse (or INT4) base.

Deployed two ways, both evaluated:
* unmerged: the base as it is plus the adapter beside it (PyTorch), the accuracy SQFT's table compares to
  (`--no-unmerged` skips it, e.g. when only the runtime-adapter row is wanted);
* merged: W + B*A exported to an IR. Plain LoRA's update is dense, so merging fills the base's zeros —
  the deployed sparsity this row reports is what SparsePEFT exists to keep;
* merged, then INT4 after training, as practitioners deploy today: data-free at each `--ptq-group-sizes`, and
  with `--ptq-data-aware` also AWQ + scale estimation calibrated on the training prompts;
* `--runtime-adapter`: unmerged as openvino_genai deploys many task adapters on one base, the base's IR plus the
  adapter applied at runtime (with `--int4-base`, SQFT's "INT4 base + adapter, unmerged" row).
`--int4-base` (with `--sym` / `--asym`) snaps the frozen base to NNCF's INT4 grid first (the QLoRA-style
baseline); the merged weights are then re-quantized to INT4 at export, since W + B*A is off the grid.

    sqft-ov run recipes/lora.py --model SPARSE_BASE --data TASK [--int4-base] [--out lora]
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

from sqft_ov import (
    EvalConfig, ExportConfig, FinetuneConfig, SFTFormat, deployed_sparsity, evaluate, export, finetune, merge,
)
from sqft_ov.adapters.config import DEFAULT_RANK, GRID_GROUP_SIZE
from sqft_ov.errors import ConfigError, warn_deprecated
from sqft_ov.recipe import (
    Bf16, DistillWeight, GradientCheckpointing, Teacher, Temperature, TrainDevice, distill_options, memory_options,
    BATCH_SIZE, LR, STEPS, TARGETS, BatchSize, ChatTemplate, Data, Deployment, EvalLimit, Lr, Metric, Option, Out,
    Overwrite, Seed, Steps, Sym, Targets, Test, check_scoring, fresh_output, task_files,
)
from sqft_ov.stages.export import DEFAULT_GROUP_SIZE
from sqft_ov.stages.export_adapter import export_adapter

RUNTIME_ADAPTER = "LoRA, base IR + runtime adapter"


def recipe(
    model: Annotated[Path, Option(help="Base model folder (e.g. the output of sqft-ov sparsify).")],
    data: Data,
    out: Out = Path("lora"),
    test: Test = None,
    int4_base: Annotated[bool, Option("--int4-base", help="Train on the base snapped to NNCF's INT4 grid "
                                      "(QLoRA-style).")] = False,
    sym: Sym = False,
    int4: Annotated[Optional[str], Option(hidden=True)] = None,  # deprecated: sym | asym, now --int4-base --sym
    group_size: Annotated[int, Option(help="INT4 group size (with --int4-base).")] = GRID_GROUP_SIZE,
    rank: Annotated[int, Option(help="LoRA rank.")] = DEFAULT_RANK,
    steps: Steps = STEPS,
    lr: Lr = LR,
    target_modules: Targets = TARGETS,
    batch_size: BatchSize = BATCH_SIZE,
    unmerged: Annotated[bool, Option(help="Evaluate the adapter unmerged on the base in PyTorch (the row SQFT's "
                                          "table compares to).")] = True,
    merged: Annotated[bool, Option(help="Also merge, export and evaluate the merged IR.")] = True,
    ptq_int4: Annotated[bool, Option(help="Also compress the merged model to INT4 after training, as "
                                          "optimum-cli does (asym, adjusted where a group size does not divide a "
                                          "layer).")] = True,
    ptq_group_sizes: Annotated[str, Option(help="Group sizes of the post-training INT4 rows, e.g. '128 32'.")] =
        str(DEFAULT_GROUP_SIZE),
    ptq_data_aware: Annotated[bool, Option(help="Also a data-aware INT4 row per group size: AWQ + scale "
                                                "estimation calibrated on the training prompts, as optimum-cli "
                                                "--awq --scale-estimation --dataset.")] = False,
    runtime_adapter: Annotated[bool, Option(help="Also deploy unmerged as openvino_genai does: the base's IR (an "
                                                 "--int4-base adapter: on its grid) + the adapter applied at "
                                                 "runtime, evaluated through genai.")] = False,
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
    if int4 is not None:
        if int4 not in ("sym", "asym"):
            raise ConfigError(f"--int4 must be sym or asym, got {int4!r}")
        warn_deprecated(f"--int4 {int4}", f"--int4-base --{int4}")
        int4_base, sym = True, int4 == "sym"
    int4 = ("sym" if sym else "asym") if int4_base else None
    train, test = task_files(data, test)
    prompts = SFTFormat(chat_template=chat_template)
    check_scoring(test or train, prompts, metric)
    out = fresh_output(out, overwrite, inputs=(model, data, test, teacher))
    scoring = EvalConfig(limit=eval_limit, data_format=prompts, loss=False, metric=metric)
    config = FinetuneConfig(**memory_options(bf16, gradient_checkpointing, device),
                            **distill_options(teacher, distill_weight, temperature),
                            method="lora", rank=rank, int4=int4, group_size=group_size, max_steps=steps, lr=lr,
                            batch_size=batch_size, eval_split=0.05, data_format=prompts, seed=seed,
                            target_modules=target_modules)
    adapter = finetune(model, train, out / "adapter", config, on_progress=on_progress).output
    base_precision = f"int4 {int4} g{group_size} (snapped)" if int4 else "fp32"
    deployments = [Deployment("LoRA", "lora", Path(model).absolute(), adapter, None, merged=False,
                              precision=f"{base_precision} + adapter", sparsity=deployed_sparsity(model),
                              evaluation=evaluate(model, test or train, replace(scoring, adapter=adapter),
                                                  on_progress))] if unmerged else []
    if runtime_adapter:  # "SQFT unmerged": many task adapters on one base IR
        ir = export_adapter(adapter, out / "ir-runtime-adapter").output
        deployments.append(Deployment(RUNTIME_ADAPTER, "lora", Path(ir), None, None, merged=False,
                                      precision=(f"int4 {int4} g{group_size}" if int4 else "int4 asym (post-training)")
                                      + " + runtime adapter", sparsity=deployed_sparsity(ir),
                                      evaluation=evaluate(ir, test or train, scoring, on_progress)))
    if merged:
        merge(adapter, out / "merged")
        fmt = ExportConfig(weight_format="int4", sym=int4 == "sym", group_size=group_size) if int4 else \
            ExportConfig(weight_format="fp16")
        ir = export(out / "merged", out / "ir", fmt).output
        deployments.append(Deployment("LoRA, merged", "lora", Path(ir), None, None, merged=True,
                                      precision=f"int4 {int4} g{group_size} (re-quantized)" if int4 else "fp16",
                                      sparsity=deployed_sparsity(ir), evaluation=evaluate(ir, test or train, scoring,
                                                                                           on_progress)))
        if ptq_int4 and not int4:  # what practitioners deploy today: merge, then post-training INT4
            deployments += _post_training(out, ptq_group_sizes, ptq_data_aware, train, prompts, test or train,
                                          scoring, on_progress)
    return deployments


def _post_training(out: Path, group_sizes: str, data_aware: bool, train: Path, prompts: SFTFormat, test: Path,
                   scoring: EvalConfig, on_progress) -> list[Deployment]:
    """The merged model compressed to INT4 after training at each group size: data-free, and (`data_aware`) with
    AWQ + scale estimation calibrated on the training prompts."""
    rows = []
    for group in (int(g) for g in group_sizes.replace(",", " ").split()):
        settings = [("INT4 PTQ", "post-training", {})]
        if data_aware:
            settings.append(("INT4 AWQ + SE", "post-training, AWQ + scale estimation",
                             dict(awq=True, scale_estimation=True, calibration=str(train),
                                  text_fields=(prompts.prompt_field,))))
        for name, how, options in settings:
            folder = out / (f"ir-int4-g{group}" + ("-awq-se" if options else ""))
            ir = export(out / "merged", folder, ExportConfig(weight_format="int4", group_size=group,
                                                             group_size_fallback="adjust", **options)).output
            rows.append(Deployment(f"LoRA, merged, {name} g{group}", "lora", Path(ir), None, None, merged=True,
                                   precision=f"int4 asym g{group} ({how})", sparsity=deployed_sparsity(ir),
                                   evaluation=evaluate(ir, test, scoring, on_progress)))
    return rows
