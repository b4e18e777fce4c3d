"""The quickstart's learning rates, chosen on the task's validation split, never on its test split.

LoRA's learning rate (every LoRA-family row's) and QA-SparsePEFT's (the QA rows') are each chosen from the
plan's `lr_choices` by one run per value (seed 42) scored on `task/validation.jsonl`; the table's runs then
train with the chosen values and the test problems are scored once per final row. Each choice run leaves its
`deployments.json`, so `--resume` keeps it; `choices.json` records every score and what was chosen.
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
    from sqft_ov.adapters.config import GRID_GROUP_SIZE
    from sqft_ov.stages.export import DEFAULT_GROUP_SIZE

    if plan.fast:
        return {}
    groups = dict.fromkeys((plan.qa_group_size or GRID_GROUP_SIZE, DEFAULT_GROUP_SIZE))
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
    """(the plan with `lr` and `qa_lr` chosen on validation, the choices.json record); the plan as it is and {}
    when it has no `lr_choices`. Ties go to the smaller learning rate; `stage(name, began)` times the choice."""
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
    write_file_atomic(out / CHOICES_JSON, json.dumps(record, indent=2), overwrite=True)
    if stage is not None:
        stage("learning rates chosen on the validation split", began)
    return replace(plan, **record["chosen"]), record
