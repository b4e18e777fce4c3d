"""The adapter configuration every method shares: what `finetune` trains and `load_adapted` rebuilds.

One dataclass, as PEFT's `LoraConfig`: the method (lora | sparsepeft | qa-sparsepeft), ranks (fixed, or an
NLS rank space), elastic base widths (LoNAS / EFTNAS), target modules, the INT4 grid, and the training
hyper-parameters recorded with the adapter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sqft_ov.adapters.methods import METHODS as REGISTRY
from sqft_ov.adapters.methods import method_for
from sqft_ov.errors import ConfigError
from sqft_ov.io.sft_data import SFTFormat

METHODS = tuple(REGISTRY)  # the registered methods' CLI names (the registry: sqft_ov.adapters.methods)
ADAPTER_CONFIG = "sqft_adapter.json"
TRAINABLE = "sqft_trainable.safetensors"
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
ALL_LINEAR = "all-linear"  # PEFT's shorthand: every linear layer of the decoder blocks
# The finetune stage's defaults, which its CLI shows too; the recipes are tuned plans with defaults of their own
# (sqft_ov/recipe.py), and their help says where they differ.
DEFAULT_RANK = 16
DEFAULT_RANK_SPACE = (32, 24, 16)
DEFAULT_LR = 3e-4
DEFAULT_LORA_DROPOUT = 0.0
GRID_GROUP_SIZE = 64  # the INT4 grid adapters train on (SQFT's); export's post-training default is optimum-cli's 128
PRECISIONS = ("fp32", "bf16", "fp16")  # the base's dtype in training, with Trainer's autocast for bf16 / fp16
DEVICES = ("auto", "cpu", "cuda", "xpu")


def split_list(values: str | int | tuple | list) -> tuple[str, ...]:
    """A list as a command line or a caller writes it: one string with commas or spaces (`"32,24,16"`,
    `"q_proj v_proj"`), or items (a repeated option), each of which may itself be such a string."""
    items = [values] if isinstance(values, (str, int)) else list(values)
    return tuple(word for item in items for word in str(item).replace(",", " ").split())


@dataclass
class FinetuneConfig:
    """What `finetune` trains; each field's help is the CLI option's (sqft_ov/cli/options.py)."""

    method: str = field(default="sparsepeft", metadata={"help": " | ".join(METHODS)})
    rank: int = field(default=DEFAULT_RANK, metadata={"help": "LoRA rank."})  # the CLI notes: without --nls
    nls: bool = field(default=False, metadata={"help": "Elastic ranks (Neural Low-rank adapter Search)."})
    rank_space: tuple[int, ...] | str = field(default=DEFAULT_RANK_SPACE, metadata={  # or a string: "32 24 16"
        "help": "Ranks NLS samples from: {default}, or the option repeated."})
    target_modules: tuple[str, ...] | str = field(default=DEFAULT_TARGETS, metadata={
        "help": "Linear layers that get adapters (comma-separated or repeated), or all-linear: every linear layer of "
                "the decoder blocks, as in PEFT."})
    # the CLI's --int4-base and --sym/--asym
    int4: str | None = field(default=None, metadata={"help": "The INT4 grid trained on: sym | asym (qa-sparsepeft: "
                                                             "required; lora: a QLoRA-style base)."})
    group_size: int = field(default=GRID_GROUP_SIZE, metadata={"help": "Group size of the INT4 grid trained on."})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha."})  # None: 2 x the (maximum) rank
    lora_dropout: float = field(default=DEFAULT_LORA_DROPOUT, metadata={  # PEFT's LoraConfig.lora_dropout
        "help": "Dropout on the adapters' input (lora, sparsepeft)."})
    data_format: SFTFormat = field(default_factory=SFTFormat)
    epochs: float = field(default=1.0, metadata={"help": "Training epochs."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimizer steps (overrides --epochs)."})
    lr: float = field(default=DEFAULT_LR, metadata={"help": "Learning rate."})
    # None: lr; NNCF's QAT-with-LoRA example uses lr / 10, which lost 4 points on SmolLM2; 0: the base's
    # round-to-nearest grid stays fixed, as in SQFT's paper
    range_lr: float | None = field(default=None, metadata={
        "help": "qa-sparsepeft: learning rate of the INT4 grid's ranges; 0 keeps the base's grid."})
    batch_size: int = field(default=4, metadata={"help": "Examples per device and step."})
    grad_accum: int = field(default=1, metadata={"help": "Gradient accumulation steps."})
    seed: int = field(default=42, metadata={"help": "Seed for data order, NLS sampling and initialisation."})
    eval_split: float = field(default=0.1, metadata={"help": "Share of the data held out for validation."})
    save_steps: int = field(default=50, metadata={"help": "Checkpoint every N steps (for --resume)."})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "Allow the model folder's own Python code to run."})
    # Memory and hardware (the paper's 7-8B sizes): the frozen base held in bf16 / fp16 with mixed-precision
    # autocast (trained tensors stay as their library keeps them), activations recomputed in backward, and where
    # it trains (auto: what torch sees, as Trainer picks it; cpu forces the CPU on a machine with a GPU)
    precision: str = field(default="fp32", metadata={  # the CLI's --bf16 / --fp16
        "help": "The frozen base's dtype in training: fp32 | bf16 | fp16 (with Trainer's autocast)."})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute each decoder block's activations in backward instead of storing them."})
    device: str = field(default="auto", metadata={
        "help": "Where to train: auto (CUDA, else XPU, else CPU) | cpu | cuda | xpu."})
    # Elastic base widths (LoNAS / EFTNAS): uniform choices, or a per-block search_space.json (importance's)
    mlp_widths: tuple[float, ...] = field(default=(), metadata={
        "help": "Elastic MLP widths (LoNAS), e.g. --mlp-widths '1.0 0.75 0.5': fractions or channel counts."})
    head_widths: tuple[float, ...] = field(default=(), metadata={
        "help": "Elastic attention heads, e.g. --head-widths '1.0 0.67': fractions or head counts (whole KV groups)."})
    search_space: str | None = field(default=None, metadata={
        "help": "Per-block elastic widths: the search_space.json that sqft-ov importance wrote (EFTNAS)."})
    # Knowledge distillation (sqft_ov/stages/distill.py): task loss + distill_weight * T^2 * KL(teacher || student)
    # over the response tokens. NNCF's distillation_qat_with_lora example and Minitron train on the KL alone at T = 1;
    # here the task loss stays and the KL is added with weight 1 by default.
    teacher: str | None = field(default=None, metadata={
        "help": "Distil from this model: a model folder (e.g. the dense base or a merged model) or a finetune output "
                "(base + adapter); frozen, in the training precision, with the student's vocabulary."})
    distill_weight: float = field(default=1.0, metadata={
        "help": "With --teacher: the loss is the task loss + this x T^2 x KL(teacher || student) over the response "
                "tokens; 0 logs the KL without training on it (NNCF's QAT-with-LoRA example and Minitron train on "
                "the KL alone)."})
    temperature: float = field(default=1.0, metadata={
        "help": "With --teacher: softmax temperature T of both models' logits (1, as in NNCF's example and "
                "Minitron)."})

    def __post_init__(self) -> None:
        from sqft_ov.adapters.nls import check_rank_space  # nls imports transformers: only when checked

        method = method_for(self.method)  # an unknown name: ConfigError naming the registered ones
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.device not in DEVICES:
            raise ConfigError(f"unknown --device {self.device!r}: choose one of {', '.join(DEVICES)}")
        if self.int4 not in (None, "sym", "asym"):
            raise ConfigError(f"INT4 grid must be sym or asym, got {self.int4!r}")
        method.check_config(self)  # the method's own rules: its INT4 grid, the options it refuses
        try:
            self.rank_space = tuple(int(r) for r in split_list(self.rank_space))
        except ValueError:
            raise ConfigError(f"--rank-space takes whole numbers, e.g. 32,24,16, got {self.rank_space!r}") from None
        if self.nls:
            self.rank_space = check_rank_space(self.rank_space)
        elif self.rank < 1:
            raise ConfigError(f"--rank must be positive, got {self.rank}")
        if self.elastic:
            from sqft_ov.adapters.elastic import parse_widths

            self.mlp_widths = parse_widths(tuple(self.mlp_widths), "--mlp-widths")
            self.head_widths = parse_widths(tuple(self.head_widths), "--head-widths")
            if self.search_space and (self.mlp_widths or self.head_widths):
                raise ConfigError("--search-space already lists every block's widths: drop --mlp-widths / --head-widths")
        self._check_distillation()
        self.target_modules = split_list(self.target_modules)
        if not self.target_modules:
            raise ConfigError("--target-modules needs at least one module name")
        if ALL_LINEAR in self.target_modules and len(self.target_modules) > 1:
            raise ConfigError(f"--target-modules {ALL_LINEAR} already names every linear layer: drop the others")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if self.range_lr is not None and not (self.range_lr >= 0 and math.isfinite(self.range_lr)):
            raise ConfigError(f"--range-lr must be 0 or positive, got {self.range_lr}")
        limits = {"--lr": (self.lr, self.lr > 0 and math.isfinite(self.lr)), "--batch-size": (self.batch_size,
                  self.batch_size >= 1), "--grad-accum": (self.grad_accum, self.grad_accum >= 1),
                  "--save-steps": (self.save_steps, self.save_steps >= 1), "--epochs": (self.epochs, self.epochs > 0),
                  "--group-size": (self.group_size, self.group_size == -1 or self.group_size >= 1),
                  "--eval-split": (self.eval_split, 0 <= self.eval_split < 1)}
        for flag, (value, ok) in limits.items():
            if not ok:
                rule = "in [0, 1)" if flag == "--eval-split" else "-1 or positive" if flag == "--group-size" else "positive"
                raise ConfigError(f"{flag} must be {rule}, got {value}")

    def _check_distillation(self) -> None:
        """--distill-weight >= 0 and --temperature > 0, both only with --teacher (left at their defaults without)."""
        if not (self.distill_weight >= 0 and math.isfinite(self.distill_weight)):
            raise ConfigError(f"--distill-weight must be 0 or positive, got {self.distill_weight}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"--temperature must be positive, got {self.temperature}")
        if self.teacher is not None and not str(self.teacher).strip():
            raise ConfigError("--teacher is empty: pass a model folder or a finetune output folder")
        self.teacher = str(self.teacher) if self.teacher is not None else None
        if self.teacher is None and (self.distill_weight, self.temperature) != (1.0, 1.0):
            raise ConfigError("--distill-weight and --temperature set knowledge distillation, which needs --teacher "
                              "MODEL: add it, or leave them at their defaults")

    @property
    def elastic(self) -> bool:
        """Elastic base widths (a super-network), besides any elastic ranks."""
        return bool(self.mlp_widths or self.head_widths or self.search_space)

    @property
    def torch_dtype(self):
        """The dtype the base is loaded and kept in."""
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]

    @property
    def grid_lr(self) -> float:
        """Learning rate of the INT4 ranges (qa-sparsepeft)."""
        return self.lr if self.range_lr is None else self.range_lr

    @property
    def max_rank(self) -> int:
        return max(self.rank_space) if self.nls else self.rank

    @property
    def alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.max_rank
