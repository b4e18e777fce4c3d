"""LoNAS: elastic adapter ranks and elastic base widths in one weight-sharing super-network, then a smaller
sub-network cut out of it.

The model's MLP channels and KV groups are first put in importance order (`importance`; the function is
unchanged), so a width is always "the most important w". Training samples a sub-network per step (largest,
smallest, random: the sandwich rule) from `--mlp-widths` x `--head-widths` x `--rank-space`; `search`
hill-climbs on held-out loss within `--max-size` (a share of the decoder's weights); `merge` merges the
adapters and physically cuts the chosen widths out; the cut model exports to an INT4 IR under OUT/ir.
On a sparse model the adapters are SparsePEFT's (masked), so the cut model keeps every remaining zero.
The same super-network at full widths is deployed beside it (OUT/full/ir), the reference for its accuracy
and speed.

    sqft-ov run recipes/lonas.py --model DENSE_MODEL --data TASK [--out lonas] [--steps 600]
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from sqft_ov import (
    EvalConfig, ExportConfig, FinetuneConfig, ImportanceConfig, SFTFormat, deployed_sparsity, evaluate, export,
    finetune, importance, merge, search,
)
from sqft_ov.adapters.config import GRID_GROUP_SIZE
from sqft_ov.adapters.elastic import check_space_fits, fit_mlp_widths, parse_widths, resolve_space
from sqft_ov.io.blocks import Shape
from sqft_ov.io.checkpoint import load_config
from sqft_ov.stages.export_groups import grouped_input_sizes, plan_group_sizes
from sqft_ov.recipe import (
    Bf16, DistillWeight, GradientCheckpointing, Teacher, Temperature, TrainDevice, distill_options, memory_options,
    BATCH_SIZE, LR, RANK_SPACE, STEPS, BatchSize, ChatTemplate, Data, Deployment, EvalLimit, Lr, Metric, Option, Out,
    Overwrite, RankSpace, Seed, Steps, Test, check_scoring, fresh_output, task_files, validation_file,
)

Model = Annotated[Path, Option(help="Model folder (dense, or sparse from sqft-ov sparsify) or .gguf file.")]
MlpWidths = Annotated[str, Option(help="MLP widths the super-network samples (fractions or channel counts).")]
HeadWidths = Annotated[str, Option(help="Attention widths (fractions or head counts, whole KV groups).")]
MaxSize = Annotated[float, Option(help="Largest share of the decoder's weights the chosen sub-network keeps.")]
GroupSize = Annotated[int, Option(help="INT4 group size of the IRs (MLP width fractions round to multiples "
                                       "of it and of 32; checked before training).")]


def deploy_super_network(label: str, model: Path, train: Path, test: Path | None, out: Path, config: FinetuneConfig,
                         max_size: float, group_size: int, eval_limit: int | None, on_progress,
                         metric: str = "exact", validation: Path | None = None) -> list[Deployment]:
    """Train the super-network, cut the searched sub-network (scored on `validation`, else on data held out of
    `train`) and the full one, export both INT4, evaluate both."""
    prompts = config.data_format
    model_config = load_config(model)
    # Every layer of every sub-network must be whole INT4 groups: a misfit fails here, not at export after training.
    plan_group_sizes(grouped_input_sizes(model, False), group_size, "error", explicit=True)
    check_space_fits(resolve_space(config, model_config), Shape.of(model_config), group_size)
    adapter = finetune(model, train, out / "adapter", config, on_progress=on_progress).output
    deployments = []
    smallest = search(adapter, "min").decoder_share  # a derived (EFTNAS) space may not reach max_size
    for name, folder, strategy, limit in ((f"{label} (full widths)", out / "full", "max", None),
                                          (label, out, "hill-climb", max(max_size, smallest))):
        folder.mkdir(parents=True, exist_ok=True)
        chosen = search(adapter, strategy, validation, budget=12, max_size=limit)
        chosen.save(folder / "sub_network.json", list(config.rank_space))
        merge(adapter, folder / "merged", folder / "sub_network.json")
        ir = export(folder / "merged", folder / "ir", ExportConfig(weight_format="int4", group_size=group_size)).output
        scoring = EvalConfig(limit=eval_limit, data_format=prompts, loss=False, metric=metric)
        evaluation = evaluate(ir, test or train, scoring, on_progress)
        deployments.append(Deployment(name, config.method, Path(ir), None, None, merged=True,
                                      precision=f"int4 asym g{group_size}, {chosen.decoder_share:.0%} of decoder",
                                      sparsity=deployed_sparsity(ir), evaluation=evaluation))
    return deployments[::-1]  # the sub-network first: it is the recipe's result


def recipe(
    model: Model,
    data: Data,
    out: Out = Path("lonas"),
    test: Test = None,
    mlp_widths: MlpWidths = "1.0 0.75 0.5",
    head_widths: HeadWidths = "1.0 0.5",
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
    ordered = importance(model, train, out / "ordered", ImportanceConfig(data_format=prompts, seed=seed)).output
    method = "sparsepeft" if deployed_sparsity(ordered) > 0 else "lora"  # a sparse base stays sparse (SQFT)
    channels = fit_mlp_widths(Shape.of(load_config(ordered)), parse_widths(mlp_widths, "--mlp-widths"), group_size)
    config = FinetuneConfig(**memory_options(bf16, gradient_checkpointing, device),
                            **distill_options(teacher, distill_weight, temperature),
                            method=method, nls=True, rank_space=rank_space,
                            mlp_widths=channels, head_widths=tuple(head_widths.split()),
                            max_steps=steps, lr=lr, batch_size=batch_size, eval_split=0.05, data_format=prompts,
                            seed=seed)
    return deploy_super_network("LoNAS", ordered, train, test, out, config, max_size, group_size, eval_limit,
                                on_progress, metric, validation_file(data))
