"""What the recipes in `recipes/` share: where their data is, and what they hand back.

A recipe (`recipes/lora.py`, `shears.py`, `sparsepeft.py`, `qa_sparsepeft.py`) is plain Python over the
public API — finetune, search, merge, export, evaluate — ending in one or more `Deployment`s: a model as a
user would ship it (an IR, or a Hugging Face folder plus an unmerged adapter) with its accuracy.
"""

from __future__ import annotations

import importlib.util
import inspect
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from sqft_ov.adapters.config import DEFAULT_TARGETS
from sqft_ov.errors import SqftError
from sqft_ov.stages.evaluate import EvalReport

TRAIN_FILE, TEST_FILE = "train.jsonl", "test.jsonl"

# The options every recipe shares, as `sqft-ov run` shows them (plain defaults when called from Python).
SparseBase = Annotated[Path, typer.Option(help="Sparse base model folder (e.g. the output of sqft-ov sparsify).")]
Data = Annotated[Path, typer.Option(help="Training data, or a folder with train.jsonl and test.jsonl.")]
Out = Annotated[Path, typer.Option(help="Folder for everything the recipe writes.")]
Test = Annotated[Optional[Path], typer.Option(help="Evaluation data [default: DATA/test.jsonl, else DATA].")]
Nls = Annotated[bool, typer.Option(help="Elastic ranks, then a sub-adapter chosen by search.")]
Rank = Annotated[int, typer.Option(help="LoRA rank (without --nls).")]
RankSpace = Annotated[str, typer.Option(help="Ranks NLS samples from.")]
Steps = Annotated[int, typer.Option(help="Optimizer steps.")]
Lr = Annotated[float, typer.Option(help="Learning rate.")]
Targets = Annotated[str, typer.Option(help="Linear layers that get adapters, e.g. 'q_proj k_proj v_proj o_proj "
                                             "gate_proj up_proj down_proj'.")]
TARGETS = " ".join(DEFAULT_TARGETS)
BatchSize = Annotated[int, typer.Option(help="Examples per step.")]
ChatTemplate = Annotated[bool, typer.Option(help="Wrap prompts in the tokenizer's chat template (instruct models).")]
Seed = Annotated[int, typer.Option(help="Seed for adapter initialisation, data order and NLS sampling.")]
EvalLimit = Annotated[Optional[int], typer.Option(help="Evaluate on the first N test examples.")]
Overwrite = Annotated[bool, typer.Option(help="Replace OUT if it exists.")]


@dataclass
class Deployment:
    label: str  # e.g. "QA-SparsePEFT + NLS"
    method: str  # lora | sparsepeft | qa-sparsepeft | none
    model: Path  # IR folder, or Hugging Face folder
    adapter: Path | None  # unmerged adapter (None once merged)
    sub_adapter: Path | None  # NLS: the ranks search chose
    merged: bool
    precision: str  # of the deployed weights, e.g. "int4 asym g64", "fp16", "fp32 + adapter"
    sparsity: float  # zeros among the decoder's linear weights as deployed (the adapter, if unmerged, is dense)
    evaluation: EvalReport | None = None
    seed: int | None = None  # of the fine-tuning run (quickstart trains some rows with several seeds)

    @property
    def accuracy(self) -> float | None:
        return self.evaluation.exact_match if self.evaluation else None

    @classmethod
    def from_dict(cls, d: dict) -> "Deployment":
        """Inverse of to_dict (the quickstart reloads finished runs with --resume)."""
        from sqft_ov.stages.evaluate import EvalReport

        report = None
        if d.get("evaluation"):
            report = EvalReport(**{k: v for k, v in d["evaluation"].items() if k != "exact_match"})
        return cls(d["label"], d["method"], Path(d["model"]), Path(d["adapter"]) if d["adapter"] else None,
                   Path(d["sub_adapter"]) if d["sub_adapter"] else None, d["merged"], d["precision"], d["sparsity"],
                   report, d.get("seed"))

    def to_dict(self) -> dict:
        return {"label": self.label, "method": self.method, "model": str(self.model),
                "adapter": str(self.adapter) if self.adapter else None,
                "sub_adapter": str(self.sub_adapter) if self.sub_adapter else None, "merged": self.merged,
                "precision": self.precision, "sparsity": self.sparsity, "accuracy": self.accuracy, "seed": self.seed,
                "evaluation": self.evaluation.to_dict() if self.evaluation else None}


def task_files(data: str | Path, test: str | Path | None = None) -> tuple[Path, Path | None]:
    """(train, test) from --data / --test: a folder holding train.jsonl (+ test.jsonl), or files."""
    data = Path(data).expanduser()
    if data.is_dir() and (data / TRAIN_FILE).is_file():
        train = data / TRAIN_FILE
        if test is None and (data / TEST_FILE).is_file():
            test = data / TEST_FILE
    elif data.exists():
        train = data
    else:
        raise SqftError(f"data {data} does not exist: pass a training file, or a folder with {TRAIN_FILE} "
                        f"(and {TEST_FILE})")
    if test is not None and not Path(test).expanduser().is_file():
        raise SqftError(f"test data {test} does not exist")
    return train, Path(test).expanduser() if test is not None else None


def fresh_output(out: str | Path, overwrite: bool, inputs: tuple = ()) -> Path:
    """OUT checked like every command's output (never one of `inputs`), and emptied when --overwrite replaces it."""
    from sqft_ov.io.output import check_output

    out = check_output(out, overwrite, inputs)
    shutil.rmtree(out, ignore_errors=True)
    return out


def load_recipe(path: str | Path):
    """The `recipe` function of a recipe file (a Python file defining `recipe(model, data, out, ...)`)."""
    path = Path(path).expanduser()
    if not path.is_file() or path.suffix != ".py":
        raise SqftError(f"recipe {path} is not a Python file: pass e.g. recipes/sparsepeft.py")
    spec = importlib.util.spec_from_file_location(f"sqft_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    function = getattr(module, "recipe", None)
    if not callable(function):
        raise SqftError(f"{path} defines no recipe() function")
    missing = {"model", "data", "out"} - set(inspect.signature(function).parameters)
    if missing:
        raise SqftError(f"{path}: recipe() must take model, data and out (missing {', '.join(sorted(missing))})")
    return function
