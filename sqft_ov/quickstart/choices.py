"""The quickstart's learning rates (and distillation weight), chosen on the validation split, never on the test split.

LoRA's learning rate (every LoRA-family row's) and QA-SparsePEFT's (the QA rows') are each chosen from the
plan's `lr_choices` by one run per value (seed 42) scored on `task/validation.jsonl`; the table's runs then
train with the chosen values and the test problems are scored once per final row. Each choice run leaves its
`deployments.json`, so `--resume` keeps it; `choices.json` records every score and what was chosen. With the
plan's `distill_choices`, the QA rows' distillation weight is chosen the same way (0: no teacher).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from sqft_ov.io.output import write_file_atomic
from sqft_ov.recipe import VALIDATION_FILE, Deployment

CHOICES_JSON = "choices.json"
CHOICE_SEED = 42


def row_options(plan) -> tuple[dict, dict, dict]:
    """The recipe options a QuickstartPlan sets: (learning rate only, LoRA-family rows, QA rows)."""
    lr = {} if plan.lr is None else {"lr": plan.lr}
    tuned = lr | ({} if plan.target_modules is None else {"target_modules": plan.target_modules})
    qa = tuned | ({} if plan.qa_lr is None else {"lr": plan.qa_lr}) | ({} if plan.qa_group_size is None
                                                                    else {"group_size": plan.qa_group_size})
    return lr, tuned, qa


def ptq_options(plan) -> dict:
    """The LoRA row's post-training INT4 rows: data-free at the QA rows' group size and at 128, and data-aware
    (AWQ + scale estimation) at both, except with --fast (the recipe's default: data-free at 128)."""
    from sqft_ov.stages.export import DEFAULT_GROUP_SIZE

    if plan.fast:
        return {}
    groups = dict.fromkeys((plan.qa_grid_group_size, DEFAULT_GROUP_SIZE))
    return {"ptq_group_sizes": " ".join(map(str, groups)), "ptq_data_aware": True}


def _score(recipe, folder: Path, resume: bool, options: dict) -> float:
    """Validation accuracy of one choice run (read back when `resume` finds it finished)."""
    done = folder / "deployments.json"
    if resume and done.is_file():
        return Deployment.from_dict(json.loads(done.read_text())[0]).accuracy
    made = recipe(out=folder, **options)
    write_file_atomic(done, json.dumps([d.to_dict() for d in made], indent=2, default=str))
    return made[0].accuracy  # LoRA: unmerged; QA-SparsePEFT: its merged INT4 IR


def choose_on_validation(plan, out: Path, sparse: Path, resume: bool, on_progress=None, say=print,
                         stage=None) -> tuple:
    """(the plan with `lr`, `qa_lr` and, with `distill_choices`, `qa_distill` chosen on validation, the
    choices.json record); the plan as it is and {} when it has no `lr_choices`. Ties go to the smaller learning
    rate (weight); `stage(name, began)` times the choice."""
    import time

    from sqft_ov.recipes import lora, qa_sparsepeft

    if not plan.lr_choices:
        return plan, {}
    began = time.perf_counter()
    _, tuned, qa = row_options(plan)
    common = dict(model=sparse, data=out / "task", test=out / "task" / VALIDATION_FILE, steps=plan.steps,
                  batch_size=plan.batch_size, chat_template=plan.chat_template, seed=CHOICE_SEED, overwrite=True,
                  on_progress=on_progress)
    record: dict = {"split": VALIDATION_FILE, "seed": CHOICE_SEED, "scores": {}, "chosen": {}}
    for key, name, recipe, options in (("lr", "LoRA", lora.recipe, {**tuned, "merged": False}),
                                       ("qa_lr", "QA-SparsePEFT", qa_sparsepeft.recipe, qa)):
        scores = {}
        for lr in plan.lr_choices:
            folder = out / "choose" / f"{name.lower()}-lr{lr:g}"
            scores[lr] = _score(recipe, folder, resume, {**common, **options, "lr": lr})
            say(f"choice {name} lr {lr:g}: {scores[lr]:.1%} on validation")
        record["scores"][name] = {f"{lr:g}": score for lr, score in scores.items()}
        record["chosen"][key] = max(plan.lr_choices, key=lambda lr: (scores[lr], -lr))
    if plan.distill_choices:
        record["chosen"]["qa_distill"] = _choose_distillation(plan, out, resume, common, qa, record, say)
    write_file_atomic(out / CHOICES_JSON, json.dumps(record, indent=2), overwrite=True)
    if stage is not None:
        stage("learning rates chosen on the validation split", began)
    return replace(plan, **record["chosen"]), record


def _choose_distillation(plan, out: Path, resume: bool, common: dict, qa: dict, record: dict, say) -> float:
    """The QA rows' distillation weight: QA-SparsePEFT at its chosen learning rate with the chosen LoRA choice
    run as teacher, one run per weight, against the same run without a teacher (its learning-rate choice run)."""
    from sqft_ov.recipes import qa_sparsepeft

    lr, qa_lr = record["chosen"]["lr"], record["chosen"]["qa_lr"]
    teacher = out / "choose" / f"lora-lr{lr:g}" / "adapter"
    scores = {0.0: record["scores"]["QA-SparsePEFT"][f"{qa_lr:g}"]}
    for weight in plan.distill_choices:
        folder = out / "choose" / f"qa-sparsepeft-lr{qa_lr:g}-distill{weight:g}"
        scores[weight] = _score(qa_sparsepeft.recipe, folder, resume, {**common, **qa, "lr": qa_lr,
                                                                       "teacher": teacher, "distill_weight": weight})
        say(f"choice QA-SparsePEFT distillation weight {weight:g} (teacher: LoRA): {scores[weight]:.1%} on validation")
    record["scores"]["QA-SparsePEFT distillation weight"] = {f"{w:g}": score for w, score in scores.items()}
    record["teacher"] = "the LoRA run of the same seed (choice: LoRA at the chosen learning rate, seed 42)"
    return max(scores, key=lambda w: (scores[w], -w))
