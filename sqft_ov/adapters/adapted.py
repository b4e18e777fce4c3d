"""A base model with the trainable adapters of one method, and the loaders that rebuild it from a folder.

`Adapted` is the handle training, search and merge share: the model (PEFT LoRA layers, or NNCF INT4 LoRA
quantizers), its trainable tensors and a way to set NLS ranks. `load_adapted` rebuilds it from a finetune
OUTPUT folder; `load_for_inference` returns a model to generate with (PEFT adapters too).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sqft_ov.adapters.config import ADAPTER_CONFIG, ALL_LINEAR, GRID_GROUP_SIZE, TRAINABLE, FinetuneConfig
from sqft_ov.adapters.methods import method_for
from sqft_ov.errors import AdapterMismatchError, ConfigError, SqftError
from sqft_ov.io.sft_data import SFTFormat


def resolve_targets(model, config: FinetuneConfig) -> FinetuneConfig:
    """`all-linear` (as in PEFT): every linear layer of the decoder blocks by its name, so that the adapter's
    record lists the names it was trained on. The caller's config is left as it is."""
    if tuple(config.target_modules) != (ALL_LINEAR,):
        return config
    import copy

    from sqft_ov.io.checkpoint import decoder_linears

    resolved = copy.copy(config)
    resolved.target_modules = tuple(dict.fromkeys(n.rsplit(".", 1)[-1] for n in decoder_linears(model)))
    return resolved


def _check_targets(model, config: FinetuneConfig) -> dict[str, torch.nn.Linear]:
    from sqft_ov.io.checkpoint import decoder_linears

    linears = decoder_linears(model)
    targets = {n: m for n, m in linears.items() if n.rsplit(".", 1)[-1] in config.target_modules}
    found = {n.rsplit(".", 1)[-1] for n in targets}
    missing = [t for t in config.target_modules if t not in found]
    if missing:
        names = sorted({n.rsplit(".", 1)[-1] for n in linears})
        raise ConfigError(f"--target-modules {', '.join(missing)} not found in the model: its linear layers are "
                        f"{', '.join(names)}")
    smallest = min(min(m.in_features, m.out_features) for m in targets.values())
    if config.max_rank > smallest:
        raise ConfigError(f"rank {config.max_rank} is larger than a target layer (smallest dimension {smallest}): "
                        "choose a smaller --rank / --rank-space")
    return targets


class Adapted:
    """A base model with trainable adapters of one method: the handle search, merge and training use.

    What differs between methods (attaching, trained tensors, ranks, merge, PEFT files) is done by
    `self.method`, the config's method object from the registry in `sqft_ov.adapters.methods`.
    """

    def __init__(self, model, config: FinetuneConfig, space=None):
        self.model, self.config = model, config
        self.method = method_for(config.method)
        self.widths = None  # ElasticWidths of a LoNAS / EFTNAS super-network
        if space is not None:
            from sqft_ov.adapters.elastic import ElasticWidths

            self.widths = ElasticWidths(model, space)
        self.layers = self.method.layers(model)  # PEFT's LoRA layers by base weight name (None: NNCF quantizers)
        self.params, names = self.method.trainable(model, config)
        self.adapted_weights = sorted(names)
        # The model's own parameter names of the trained tensors: a sharded (FSDP) run replaces the parameter
        # objects, and its gathered state dict is keyed by these names.
        model_names = {id(p): n for n, p in model.named_parameters()}
        self.model_names = {name: model_names[id(p)] for name, p in self.params.items()}

    @property
    def qa(self) -> bool:
        """Whether the method trains through INT4 fake quantization (QA-SparsePEFT); kept for callers of old."""
        return self.method.quantized

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each decoder block's activations in backward instead of keeping them (non-reentrant, so
        frozen inputs need no grad), with what the method's forward needs to be recomputed the same way."""
        kwargs = {"use_reentrant": False, **self.method.recompute_kwargs(self.model)}
        self.model.config.use_cache = False
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    @classmethod
    def build(cls, base, config: FinetuneConfig, init_adapters: bool = True, space=None) -> "Adapted":
        """`init_adapters=False`: the caller loads trained tensors next (NNCF's own init costs minutes).
        `space`: a WidthSpace makes the base's widths elastic too."""
        config = resolve_targets(base, config)
        _check_targets(base, config)
        base.requires_grad_(False)
        model = method_for(config.method).attach(base, config, init_adapters)
        return cls(model, config, space)

    def set_ranks(self, ranks_by_weight: dict[str, int]) -> None:
        self.method.set_ranks(self, ranks_by_weight)

    def set_widths(self, widths) -> None:
        self.widths.set(widths)

    def state(self, model_state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The trained tensors by their stable names; from `model_state` (a full state dict gathered from a
        sharded model) where given, since the parameters held here are then no longer the trained ones."""
        if model_state is not None:
            return {n: model_state[self.model_names[n]].detach().cpu().contiguous() for n in self.params}
        return {n: p.detach().cpu().contiguous() for n, p in self.params.items()}

    @torch.no_grad()
    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = set(self.params) - set(tensors)
        unexpected = set(tensors) - set(self.params)
        if missing or unexpected:
            example = sorted(missing or unexpected)[0]
            raise AdapterMismatchError(f"the adapter's tensors do not match its {ADAPTER_CONFIG} ({len(missing)} "
                                       f"missing, {len(unexpected)} unexpected, e.g. {example}): its target modules "
                                       "were edited, or the files come from different runs")
        for name, param in self.params.items():
            if tensors[name].shape != param.shape:
                raise AdapterMismatchError(f"adapter tensor {name} has shape {tuple(tensors[name].shape)}, its "
                                           f"{ADAPTER_CONFIG}'s rank / rank_space and the base give "
                                           f"{tuple(param.shape)}: the file was edited, or the base is another model")
            param.copy_(tensors[name])


RECORD_KEYS = ("method", "nls", "rank", "rank_space", "target_modules", "quantization", "base", "base_fingerprint",
               "lora_alpha", "data_format", "eval_split", "seed", "adapted_weights")


def read_record(adapter_dir: Path) -> dict:
    """The adapter's sqft_adapter.json, with the keys loading needs (a hand-edited file fails in one line)."""
    file = adapter_dir / ADAPTER_CONFIG
    if not file.is_file():
        raise SqftError(f"{adapter_dir} is not a sqft-ov finetune output (no {ADAPTER_CONFIG})")
    try:
        record = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SqftError(f"{file} is not valid JSON ({exc}): restore it from the finetune output") from None
    missing = [k for k in RECORD_KEYS if not isinstance(record, dict) or k not in record]
    if missing:
        raise SqftError(f"{file} lacks {', '.join(missing)}: restore it from the finetune output")
    quant = record["quantization"]
    if quant is not None and not (isinstance(quant, dict) and {"sym", "group_size"} <= set(quant)):
        raise SqftError(f"{file}: 'quantization' must name the INT4 grid's sym and group_size: restore it from the "
                        "finetune output")
    from sqft_ov.adapters.methods import METHODS  # the registry as it is now (a test may register a method)

    if record["method"] not in METHODS:
        raise SqftError(f"{file} names method {record['method']!r}, not one of {', '.join(METHODS)}: restore it from "
                        "the finetune output")
    return record


def load_adapted(adapter_dir: str | Path, base: str | Path | None = None, check_fingerprint: bool = True,
                 dtype: torch.dtype = torch.float32):
    """Rebuild the trained model from an OUTPUT folder: base + method structure + trained tensors."""
    from safetensors.torch import load_file

    from sqft_ov.io.checkpoint import load_causal_lm, model_fingerprint
    from sqft_ov.io.prompt_format import mark_prompt_format

    adapter_dir = Path(adapter_dir)
    record = read_record(adapter_dir)
    base = Path(base or record["base"])
    if check_fingerprint and model_fingerprint(base) != record["base_fingerprint"]:
        raise AdapterMismatchError(f"the base model in {base} is not the one the adapter was trained on "
                                   "(fingerprint differs): pass the original base with --base")
    if not (adapter_dir / TRAINABLE).is_file():
        raise SqftError(f"{adapter_dir} has no {TRAINABLE} (the trained tensors): copy the whole adapter folder")
    quant = record["quantization"] or {}
    config = FinetuneConfig(method=record["method"], rank=record["rank"], nls=record["nls"],
                            rank_space=tuple(record["rank_space"]), target_modules=tuple(record["target_modules"]),
                            int4=("sym" if quant.get("sym") else "asym") if quant else None,
                            group_size=quant["group_size"] if quant else GRID_GROUP_SIZE, lora_alpha=record["lora_alpha"],
                            data_format=SFTFormat(**record["data_format"]), eval_split=record["eval_split"],
                            seed=record["seed"])
    model, tokenizer = load_causal_lm(base, dtype=dtype)
    # how training prompted the model (older records: known only where the template was asked for)
    templated = record.get("chat_template_applied", True if record["data_format"].get("chat_template") else None)
    if templated is not None:
        mark_prompt_format(model.config, templated)
    space = None
    if record.get("widths"):
        from sqft_ov.adapters.elastic import WidthSpace
        from sqft_ov.io.blocks import Shape

        space = WidthSpace.from_dict(record["widths"], Shape.of(model.config), f"{adapter_dir / ADAPTER_CONFIG}")
    adapted = Adapted.build(model, config, init_adapters=False, space=space)
    adapted.load_state(load_file(adapter_dir / TRAINABLE))
    adapted.model.eval()
    return adapted, tokenizer, record


def activate(adapted: Adapted, sub_adapter=None) -> list[int] | None:
    """Activate a sub-network (a CONFIG.json from search, or its `SearchResult`; default: the largest ranks and
    widths).

    Returns the ranks per block (None without NLS); the widths, if elastic, are in `adapted.widths.active`.
    """
    from sqft_ov.adapters.nls import blocks_of, expand, load_sub_adapter, load_sub_widths

    nls = adapted.config.nls
    if not nls and adapted.widths is None:
        if sub_adapter is not None:
            raise ConfigError("the adapter was trained without --nls or elastic widths: --sub-adapter does not apply")
        return None
    ranks = None
    if nls:
        blocks = blocks_of(adapted.adapted_weights)
        rank_space = list(adapted.config.rank_space)
        ranks = (load_sub_adapter(sub_adapter, rank_space, len(blocks)) if sub_adapter
                 else [max(rank_space)] * len(blocks))
        adapted.set_ranks(expand(dict(zip(blocks, ranks)), blocks))
    if adapted.widths is not None:
        space = adapted.widths.space
        adapted.set_widths(load_sub_widths(sub_adapter, space) if sub_adapter else space.largest())
    return ranks


def load_for_inference(model_dir: str | Path, adapter: str | Path | None = None, dtype="auto",
                       sub_adapter: str | Path | None = None, allow_qa: bool = True):
    """(model, tokenizer) to generate with in PyTorch: a Hugging Face folder, optionally with an adapter.

    sqft-ov finetune outputs that need their own forward (sparsepeft's mask, NLS ranks, qa-sparsepeft's
    fake quantization) are rebuilt with `load_adapted`; any other adapter folder is loaded with PEFT.
    `allow_qa=False` refuses qa-sparsepeft adapters, whose trained form is a simulation, not a deployment.
    """
    from sqft_ov.io.checkpoint import load_causal_lm

    adapter = Path(adapter) if adapter else None
    if adapter is not None and (adapter / ADAPTER_CONFIG).is_file():
        record = read_record(adapter)
        method = method_for(record["method"])
        if method.quantized and not allow_qa:
            raise SqftError(f"{adapter} is a {method.name} adapter: its trained form is NNCF fake quantization, not "
                            "a deployment; merge it (sqft-ov merge) and use the exported IR")
        if not method.plain_peft or record["nls"] or record.get("widths"):
            torch_dtype = torch.float32 if dtype == "auto" else dtype
            adapted, tokenizer, _ = load_adapted(adapter, base=model_dir, dtype=torch_dtype)
            activate(adapted, sub_adapter)
            return adapted.model, tokenizer
    if sub_adapter is not None:
        raise ConfigError("--sub-adapter needs an NLS or elastic-width adapter written by sqft-ov finetune")
    model, tokenizer = load_causal_lm(model_dir, dtype=dtype)
    if adapter is not None:
        from peft import PeftModel

        if not (adapter / "adapter_config.json").is_file():
            raise SqftError(f"{adapter} is not a PEFT adapter folder (no adapter_config.json)")
        try:
            model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
        except Exception as exc:
            raise AdapterMismatchError(f"adapter {adapter} does not fit the model in {model_dir}: "
                                       f"{str(exc).strip().splitlines()[-1]}") from exc
        model.eval()
    return model, tokenizer
