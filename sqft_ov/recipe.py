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
from typing import Annotated, Any, Optional

from sqft_ov.adapters.config import DEFAULT_TARGETS, FinetuneConfig
from sqft_ov.config_fields import default_and_help, field_help, shown
from sqft_ov.errors import ConfigError, SqftError
from sqft_ov.stages.evaluate import EvalReport

TRAIN_FILE, TEST_FILE, VALIDATION_FILE = "train.jsonl", "test.jsonl", "validation.jsonl"

# A recipe is a tuned plan (a few hundred steps on small task data), so some of its defaults differ from the
# finetune stage's (sqft_ov/adapters/config.py) on purpose; the options' help says where. The quickstart's
# figures were measured with these values.
RANK_SPACE = (16, 12, 8)
LR = 3e-3
STEPS = 600
BATCH_SIZE = 16


def planned(name: str, plan: Any) -> str:
    """FinetuneConfig's help for a field the recipes' plan sets otherwise, saying so and naming finetune's default."""
    default, _ = default_and_help(FinetuneConfig, name)
    return field_help(FinetuneConfig, name, f"the recipes' plan; finetune's default is {shown(default)}", plan)


class Option:
    """How `sqft-ov run` shows a recipe parameter: `Annotated[int, Option(help="...")]` in a recipe's signature.

    Plain data, so recipes stay plain Python (no CLI library): the CLI turns each one into a typer option
    (`sqft_ov.cli.pipelines`). `flags` name the option where its name is not the parameter's (`"--sym/--asym"`);
    a parameter without one is still an option, without help.
    """

    def __init__(self, *flags: str, help: str | None = None, metavar: str | None = None,  # noqa: A002
                 show_default: bool | str = True, hidden: bool = False):
        self.flags, self.help, self.metavar, self.show_default, self.hidden = flags, help, metavar, show_default, hidden

    def __repr__(self) -> str:
        return f"Option({', '.join(map(repr, self.flags))}{', ' if self.flags else ''}help={self.help!r})"


# The options every recipe shares, as `sqft-ov run` shows them (plain defaults when called from Python); the help
# of a FinetuneConfig field is the field's (tests/test_config_source.py checks the recipes' options against it).
SparseBase = Annotated[Path, Option(help="Sparse base model folder (e.g. the output of sqft-ov sparsify).")]
Data = Annotated[Path, Option(help="Training data, or a folder with train.jsonl, test.jsonl and (scored by "
                                   "searches) validation.jsonl.")]
Out = Annotated[Path, Option(help="Folder for everything the recipe writes.")]
Test = Annotated[Optional[Path], Option(show_default="DATA/test.jsonl, else DATA", help="Evaluation data.")]
Nls = Annotated[bool, Option(help="Elastic ranks, then a sub-adapter chosen by search.")]  # what the recipe does
Rank = Annotated[int, Option(help=field_help(FinetuneConfig, "rank", "without --nls"))]
RankSpace = Annotated[list[str], Option(metavar="RANKS", help=planned("rank_space", RANK_SPACE))]
Steps = Annotated[int, Option(help="Optimizer steps.")]
Lr = Annotated[float, Option(help=planned("lr", LR))]
Targets = Annotated[list[str], Option(metavar="NAMES", help=field_help(FinetuneConfig, "target_modules"))]
TARGETS = DEFAULT_TARGETS
Sym = Annotated[bool, Option("--sym/--asym", help="INT4 grid without / with zero points.")]
BatchSize = Annotated[int, Option(help=planned("batch_size", BATCH_SIZE))]
ChatTemplate = Annotated[bool, Option(help="Wrap prompts in the tokenizer's chat template (instruct models).")]
Seed = Annotated[int, Option(help=field_help(FinetuneConfig, "seed"))]
EvalLimit = Annotated[Optional[int], Option(show_default="all", help="Evaluate on the first N test examples.")]
Metric = Annotated[str, Option(help="How the test data scores the deployments: exact | contains | loss (see "
                                    "sqft-ov eval --metric); checked before training.")]
Overwrite = Annotated[bool, Option(help="Replace OUT if it exists.")]
Bf16 = Annotated[bool, Option("--bf16", help="Train with the frozen base in bfloat16 (finetune --bf16: half its memory; "
                                           "slower on CPUs without bf16 instructions).")]
GradientCheckpointing = Annotated[bool, Option("--gradient-checkpointing",
                                               help=field_help(FinetuneConfig, "gradient_checkpointing"))]
TrainDevice = Annotated[str, Option(help=field_help(FinetuneConfig, "device"))]
Teacher = Annotated[Optional[Path], Option(show_default="none: no distillation",
                                          help=field_help(FinetuneConfig, "teacher"))]
DistillWeight = Annotated[float, Option(help=field_help(FinetuneConfig, "distill_weight"))]
Temperature = Annotated[float, Option(help=field_help(FinetuneConfig, "temperature"))]


def memory_options(bf16: bool, gradient_checkpointing: bool, device: str) -> dict:
    """The recipes' --bf16 / --gradient-checkpointing / --device as FinetuneConfig fields."""
    return {"precision": "bf16" if bf16 else "fp32", "gradient_checkpointing": gradient_checkpointing, "device": device}


def distill_options(teacher: str | Path | None, distill_weight: float, temperature: float) -> dict:
    """The recipes' --teacher / --distill-weight / --temperature as FinetuneConfig fields."""
    return {"teacher": str(teacher) if teacher else None, "distill_weight": distill_weight, "temperature": temperature}


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
            derived = ("exact_match", "perplexity")  # properties to_dict adds
            report = EvalReport(**{k: v for k, v in d["evaluation"].items() if k not in derived})
        return cls(d["label"], d["method"], Path(d["model"]), Path(d["adapter"]) if d["adapter"] else None,
                   Path(d["sub_adapter"]) if d["sub_adapter"] else None, d["merged"], d["precision"], d["sparsity"],
                   report, d.get("seed"))

    def to_dict(self) -> dict:
        return {"label": self.label, "method": self.method, "model": str(self.model),
                "adapter": str(self.adapter) if self.adapter else None,
                "sub_adapter": str(self.sub_adapter) if self.sub_adapter else None, "merged": self.merged,
                "precision": self.precision, "sparsity": self.sparsity, "accuracy": self.accuracy, "seed": self.seed,
                "evaluation": self.evaluation.to_dict() if self.evaluation else None}


def validation_file(data: str | Path) -> Path | None:
    """DATA/validation.jsonl where --data is a folder holding one: the held-out problems a recipe's search scores
    sub-networks on (else search holds out part of the training data), never the test problems."""
    path = Path(data).expanduser() / VALIDATION_FILE
    return path if path.is_file() else None


def task_files(data: str | Path, test: str | Path | None = None) -> tuple[Path, Path | None]:
    """(train, test) from --data / --test: a folder holding train.jsonl (+ test.jsonl), files or Hub datasets."""
    from sqft_ov.io.hub import is_hub_dataset

    data = Path(data).expanduser()
    if data.is_dir() and (data / TRAIN_FILE).is_file():
        train = data / TRAIN_FILE
        if test is None and (data / TEST_FILE).is_file():
            test = data / TEST_FILE
    elif data.exists() or is_hub_dataset(data):
        train = data
    else:
        raise SqftError(f"data {data} does not exist: pass a training file, or a folder with {TRAIN_FILE} "
                        f"(and {TEST_FILE})")
    if test is not None and not Path(test).expanduser().is_file() and not is_hub_dataset(test):
        raise SqftError(f"test data {test} does not exist")
    return train, Path(test).expanduser() if test is not None else None


def check_scoring(test: str | Path, fmt, metric: str) -> None:
    """Fail now, not after training, when METRIC cannot score the test data (no response, no assistant turn)."""
    from sqft_ov.stages.evaluate import eval_pairs

    eval_pairs(test, fmt, metric)


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
        raise ConfigError(f"recipe {path} is not a Python file: pass e.g. recipes/sparsepeft.py")
    spec = importlib.util.spec_from_file_location(f"sqft_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    function = getattr(module, "recipe", None)
    if not callable(function):
        raise ConfigError(f"{path} defines no recipe() function")
    missing = {"model", "data", "out"} - set(inspect.signature(function).parameters)
    if missing:
        raise ConfigError(f"{path}: recipe() must take model, data and out (missing {', '.join(sorted(missing))})")
    return function
