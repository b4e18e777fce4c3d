"""The quickstart's plan: how much work each stage gets, which rows it trains and how often, and the record of it
in OUT/plan.json that `--resume` checks."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from sqft_ov.errors import ConfigError

PLAN_JSON = "plan.json"  # the plan OUT was started with: --resume refuses another

# QA-SparsePEFT's recipe on the dense base (NNCF's QAT + LoRA on INT4, merged on its grid; the mask is all ones):
# what the sparsity costs is this row minus QA-SparsePEFT
DENSE_QA = "Dense QA-LoRA"
# SQFT's "INT4 base + adapter, unmerged" row as openvino_genai deploys it: LoRA trained on the sparse base snapped
# to the QA rows' INT4 grid, the base's INT4 IR + the adapter applied at runtime (recipes/lora.py --runtime-adapter)
UNMERGED = "SQFT unmerged (INT4 base IR + runtime adapter)"
# on a real model (~15-35 min a recipe here) only these are re-trained
REAL_SEEDED = ("LoRA", "QA-SparsePEFT", DENSE_QA, UNMERGED)
QA_ROWS = ("QA-SparsePEFT", "QA-SparsePEFT + NLS", DENSE_QA)  # what a chosen distillation weight applies to
ALL_LINEARS = "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj"  # a Llama block's linears


@dataclass(frozen=True)
class QuickstartPlan:
    """How much work each stage gets: the full run or `--fast` (a smoke test), on the embedded or a real model."""

    fast: bool
    train_examples: int
    test_examples: int
    steps: int  # fine-tuning steps per recipe
    nls_variants: bool  # SparsePEFT / QA-SparsePEFT + NLS rows (Shears always uses NLS)
    bench_repeats: int
    bench_new_tokens: int
    real_model: bool = False
    seeds: int = 1  # fine-tuning runs per seeded row
    seeded: tuple[str, ...] | None = None  # rows trained `seeds` times (None: every fine-tuned row)
    batch_size: int = 16
    lr: float | None = None  # None: each recipe's own default
    qa_lr: float | None = None
    chat_template: bool = False
    calibration: tuple[int, int] = (64, 128)  # Wanda: sequences x tokens
    qa_group_size: int | None = None  # None: the recipe's default (64)
    target_modules: str | None = None  # the linears that get adapters; None: each recipe's default
    nas_rows: bool = False  # LoNAS / EFTNAS super-networks on the dense base (one seed: their own comparison)
    validation_examples: int = 100  # held out of train and test: what searches score sub-networks on
    dense_qa: bool = True  # the Dense QA-LoRA and SQFT-unmerged rows (not in --fast)
    lr_choices: tuple[float, ...] = ()  # learning rates LoRA's and QA-SparsePEFT's are chosen from, on validation
    # problems skipped before the test split: the real plan's steps, group size and targets were tuned in an
    # earlier release on the first 100 problems of this stream, so its test set starts after them
    test_held_back: int = 0
    # distillation weights the QA rows' is chosen from on validation, against none (0): the teacher is the LoRA
    # run of the same seed (its sparse base + adapter), the loss task + w * KL as `finetune --teacher`
    distill_choices: tuple[float, ...] = ()
    qa_distill: float = 0.0  # the chosen weight (0: the QA rows train without a teacher)

    @property
    def qa_grid_group_size(self) -> int:
        """The QA rows' INT4 group size: the plan's, or the recipes' default. The PTQ and unmerged rows match it."""
        from sqft_ov.adapters.config import GRID_GROUP_SIZE

        return self.qa_group_size or GRID_GROUP_SIZE

    @classmethod
    def make(cls, fast: bool, real_model: bool = False, seeds: int | None = None) -> "QuickstartPlan":
        if not real_model:  # --fast: 200 steps, where LoRA is past the cliff (README, "--fast")
            plan = cls(True, 1200, 100, 200, False, 1, 16, dense_qa=False) if fast else \
                cls(False, 2000, 200, 600, True, 3, 32, seeds=3, nas_rows=True, lr_choices=(1e-3, 3e-3))
        elif fast:
            plan = cls(True, 200, 16, 8, False, 1, 16, True, 1, REAL_SEEDED, 4, 1e-3, 1e-3, True, (16, 256),
                       qa_group_size=32, validation_examples=16, dense_qa=False)
        else:  # group 32 (g64 left QA-SparsePEFT at 14 %), adapters on all seven linears for 160 steps (5 linears
            # x 80 steps left it at 84 % of LoRA), chosen on the 100 problems the test split now skips
            plan = cls(False, 800, 300, 160, True, 3, 32, True, 3, REAL_SEEDED, 8, 1e-3, 1e-3, True, (64, 256),
                       qa_group_size=32, target_modules=ALL_LINEARS, lr_choices=(3e-4, 1e-3, 3e-3),
                       test_held_back=100, distill_choices=(1.0,))
        return plan if seeds is None else replace(plan, seeds=seeds)


def plan_record(plan: QuickstartPlan, model: str | Path | None, foundation: str | None = None) -> dict:
    """What OUT/plan.json holds: the plan, the model and (embedded runs) the foundation model's key."""
    if model is not None and Path(model).expanduser().exists():
        model = Path(model).expanduser().absolute()
    record = {"model": None if model is None else str(model), **plan.__dict__}
    if foundation is not None:
        record["foundation"] = foundation
    return json.loads(json.dumps(record))


def check_same_plan(out: Path, plan: QuickstartPlan, model: str | Path | None, foundation: str | None = None) -> None:
    """--resume with other options (or after an upgrade that changed the plan) would table runs trained two
    ways as one row: refuse. More seeds are fine (each seed is a run of its own: the new ones are trained, the
    others kept); fewer would drop finished runs. A folder from before plan.json existed (or before it
    recorded the foundation model) has nothing to compare with."""
    path = out / PLAN_JSON
    if not path.is_file():
        return
    before, now = json.loads(path.read_text()), plan_record(plan, model, foundation)
    if "foundation" not in before:
        now.pop("foundation", None)
    grown = isinstance(before.get("seeds"), int) and now["seeds"] > before["seeds"]
    changed = [f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(before.keys() | now.keys())
               if before.get(k) != now.get(k) and not (k == "seeds" and grown)]
    if changed:
        raise ConfigError(f"--resume: {out} was started with another plan ({'; '.join(changed)}): resume with the "
                          "same options and version (--seeds may grow), or start again without --resume")
