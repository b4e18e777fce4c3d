"""The adapter methods as objects, one class each (as PEFT's LoRA variants), and their registry.

Everything that differs between LoRA, SparsePEFT and QA-SparsePEFT lives here: what the config allows, how
the adapters are attached to a base, which tensors train, how ranks are set, the optimizer's groups, how the
trained model merges and which PEFT files it writes. `Adapted`, `finetune` and `merge` call the method object
and never compare method names. Adding a method is one class below and one entry in `METHODS`.

NLS (elastic ranks) and elastic base widths are options of the config every method composes with (or refuses in
`check_config`), not methods.

This module stays light at import time (`adapters.config` reads the registry): torch, PEFT and NNCF are
imported inside the methods, and NNCF internals only through `adapters.qa_lora`.
"""

from __future__ import annotations

from typing import ClassVar

from sqft_ov.errors import ConfigError


class AdapterMethod:
    """One adapter method: a stateless object `Adapted` hands its per-method work to.

    `int4_grid`: "optional" (an INT4 base only when asked: QLoRA-style), "refused" or "required" (trains on it).
    `quantized`: trains through INT4 fake quantization and merges onto the trained grid.
    `masked`: the update is multiplied by the base's non-zero mask, so merging keeps the base's zeros.
    `plain_peft`: its folder is a standard PEFT adapter that plain PEFT loads and merges correctly.
    `runtime`: why openvino_genai cannot apply it at runtime on the base's IR exactly (None: it can, as
    y = x W^T + s x A^T B^T: `sqft-ov export ADAPTER IR` writes the base IR + a genai adapter).
    """

    name: ClassVar[str]
    int4_grid: ClassVar[str] = "optional"
    quantized: ClassVar[bool] = False
    masked: ClassVar[bool] = False
    plain_peft: ClassVar[bool] = False
    runtime: ClassVar[str | None] = "it is not a plain LoRA update"

    def check_config(self, config) -> None:
        """Per-method rules of a FinetuneConfig (defaults it may fill in, combinations it refuses)."""

    def attach(self, base, config, init_adapters: bool = True):
        """The base (frozen by the caller) with this method's trainable adapters: the model to train."""
        raise NotImplementedError

    def layers(self, model) -> dict | None:
        """PEFT's LoRA layers by base weight name, for methods built on PEFT (else None)."""
        return None

    def trainable(self, model, config) -> tuple[dict, list[str]]:
        """(the trained tensors by stable name, the base weight names that have adapters)."""
        raise NotImplementedError

    def set_ranks(self, adapted, ranks_by_weight: dict[str, int]) -> None:
        raise NotImplementedError

    def recompute_kwargs(self, model) -> dict:
        """Extra gradient-checkpointing kwargs (torch.utils.checkpoint's) the method's forward needs."""
        return {}

    def optimizer_groups(self, adapted) -> list[dict] | None:
        """Parameter groups for the optimizer, or None for Trainer's default (one group at the config's lr)."""
        return None

    def range_lr(self, config) -> float | None:
        """The INT4 ranges' learning rate as recorded in sqft_adapter.json (None: no trained grid)."""
        return None

    def merge(self, adapted) -> tuple[object, list[str], dict | None]:
        """Merge in place: (the plain model with merged weights, the merged weight names, the trained INT4 grids
        or None for a float merge)."""
        raise NotImplementedError

    def save(self, adapted, folder, gathered: dict | None = None) -> None:
        """PEFT's files beside sqft-ov's (`gathered`: a sharded run's full state dict); none by default."""


class LoRA(AdapterMethod):
    """PEFT LoRA on the base as it is (SQFT's baseline); with `int4` the base is first snapped to NNCF's INT4 grid
    (QLoRA-style). Merging fills the base's zeros."""

    name = "lora"
    plain_peft = True
    runtime = None

    def attach(self, base, config, init_adapters: bool = True):
        if config.int4:
            _snap_to_int4(base, config.int4 == "sym", config.group_size)
        return self._peft_model(base, config)

    def _peft_model(self, base, config):
        from peft import LoraConfig, get_peft_model

        from sqft_ov.adapters.sparse_lora import make_elastic, peft_lora_layers

        peft_config = LoraConfig(r=config.max_rank, lora_alpha=config.alpha, lora_dropout=config.lora_dropout,
                                 target_modules=list(config.target_modules), task_type="CAUSAL_LM")
        model = get_peft_model(base, peft_config)
        if self.masked or config.nls:
            make_elastic(peft_lora_layers(model), masked=self.masked)
        return model

    def layers(self, model) -> dict:
        from sqft_ov.adapters.sparse_lora import peft_lora_layers

        return peft_lora_layers(model)

    def trainable(self, model, config) -> tuple[dict, list[str]]:
        return {n: p for n, p in model.named_parameters() if p.requires_grad}, list(self.layers(model))

    def set_ranks(self, adapted, ranks_by_weight: dict[str, int]) -> None:
        from sqft_ov.adapters.sparse_lora import set_ranks

        set_ranks(adapted.layers, ranks_by_weight)

    def merge(self, adapted) -> tuple[object, list[str], None]:
        from sqft_ov.adapters.sparse_lora import merged_weight

        for layer in adapted.layers.values():
            layer.base_layer.weight.copy_(merged_weight(layer, getattr(layer, "sqft_rank", None), masked=self.masked))
        return adapted.model.unload(), sorted(adapted.layers), None  # PEFT: the base with its merged Linear layers

    def save(self, adapted, folder, gathered: dict | None = None) -> None:
        adapted.model.save_pretrained(folder, state_dict=gathered)  # gathered: a sharded run's full state dict


class SparsePEFT(LoRA):
    """PEFT LoRA whose update is multiplied by the base weight's non-zero mask, in training and in merge."""

    name = "sparsepeft"
    int4_grid = "refused"
    masked = True
    plain_peft = False
    runtime = "its update is masked by the base's sparsity, which genai's runtime LoRA does not do"

    def check_config(self, config) -> None:
        if config.int4 is not None:
            raise ConfigError("sparsepeft trains on the float base: use --method qa-sparsepeft for an INT4 base")

    def attach(self, base, config, init_adapters: bool = True):
        return self._peft_model(base, config)

    def save(self, adapted, folder, gathered: dict | None = None) -> None:
        """Typed so that plain PEFT refuses the folder: it would merge the update unmasked and refill the zeros."""
        from sqft_ov.adapters.sparse_lora import refuse_plain_peft

        super().save(adapted, folder, gathered)
        refuse_plain_peft(folder)


class QASparsePEFT(AdapterMethod):
    """NNCF INT4 fake-quantized LoRA with the mask inside the quantizer: fake_quant(W + mask * B A), so the merged
    model is one sparse INT4 model. Its trained form is a simulation: no PEFT folder."""

    name = "qa-sparsepeft"
    int4_grid = "required"
    quantized = True
    masked = True
    runtime = "its merge is fake-quantized onto the trained INT4 grid (masked), which a runtime LoRA cannot reproduce"

    def check_config(self, config) -> None:
        if config.int4 is None:
            config.int4 = "asym"
        if config.elastic:
            raise ConfigError("elastic widths do not compose with qa-sparsepeft yet: cutting a sub-network would "
                              "also have to cut the trained INT4 grid's groups; train sparsepeft or lora with "
                              "widths, merge, then export --weight-format int4")
        if config.lora_dropout:
            raise ConfigError("--lora-dropout: NNCF's INT4 LoRA quantizer (qa-sparsepeft) has no dropout; use 0")

    def attach(self, base, config, init_adapters: bool = True):
        import torch

        from sqft_ov.adapters.qa_lora import compress_with_lora, lora_quantizers, trainable_tensors

        model = compress_with_lora(base, config.int4 == "sym", config.group_size, config.max_rank, config.nls,
                                   masked=self.masked, init_adapters=init_adapters)
        model.requires_grad_(False)
        for param in trainable_tensors(model, set(config.target_modules)).values():
            param.requires_grad_(True)
        with torch.no_grad():  # NNCF gives every INT4 linear an adapter; the untrained ones must add nothing
            for name, quantizer in lora_quantizers(model).items():
                if name.rsplit(".", 2)[-2] not in config.target_modules:
                    quantizer.lora_A.zero_()
                    quantizer.lora_B.zero_()
        return model

    def trainable(self, model, config) -> tuple[dict, list[str]]:
        from sqft_ov.adapters.qa_lora import lora_quantizers, trainable_tensors

        names = [n for n in lora_quantizers(model) if n.rsplit(".", 2)[-2] in config.target_modules]
        return trainable_tensors(model, set(config.target_modules)), names

    def set_ranks(self, adapted, ranks_by_weight: dict[str, int]) -> None:
        from sqft_ov.adapters.qa_lora import set_ranks

        set_ranks(adapted.model, ranks_by_weight)

    def recompute_kwargs(self, model) -> dict:
        """NNCF's fake quantization runs in its hook mode, which the recomputation must re-enter, else it would
        recompute unquantized weights."""
        from sqft_ov.adapters.qa_lora import recompute_context

        return {"context_fn": recompute_context(model)}

    def optimizer_groups(self, adapted) -> list[dict]:
        """The INT4 ranges in a parameter group of their own, at the config's `grid_lr`."""
        grid = [p for n, p in adapted.params.items() if not n.endswith(("lora_A", "lora_B"))]
        adapters = [p for n, p in adapted.params.items() if n.endswith(("lora_A", "lora_B"))]
        return [{"params": adapters}, {"params": grid, "lr": adapted.config.grid_lr}]

    def range_lr(self, config) -> float:
        return config.grid_lr

    def merge(self, adapted) -> tuple[object, list[str], dict]:
        from sqft_ov.adapters.qa_lora import merge_in_place

        grids = merge_in_place(adapted.model)
        return _without_hooks(adapted.model), sorted(grids), grids


METHODS: dict[str, type[AdapterMethod]] = {cls.name: cls for cls in (LoRA, SparsePEFT, QASparsePEFT)}


def method_for(name: str) -> AdapterMethod:
    """The method registered under its CLI name (`--method`)."""
    if name not in METHODS:
        raise ConfigError(f"unknown --method {name!r}: choose one of {', '.join(METHODS)}")
    return METHODS[name]()


def _snap_to_int4(model, sym: bool, group_size: int) -> None:
    """QLoRA-style baseline: replace the base weights by their NNCF INT4 round-to-nearest values."""
    import nncf
    import torch

    mode = nncf.CompressWeightsMode.INT4_SYM if sym else nncf.CompressWeightsMode.INT4_ASYM
    example = {"input_ids": torch.ones(1, 8, dtype=torch.long)}
    try:
        compressed = nncf.compress_weights(model, mode=mode, group_size=group_size, dataset=nncf.Dataset([example]))
    except nncf.errors.InvalidGroupSizeError as exc:
        raise ConfigError(f"--group-size {group_size} does not divide every layer: choose a divisor") from exc
    nncf.strip(compressed, do_copy=False, strip_format=nncf.StripFormat.IN_PLACE, example_input=example)


def _without_hooks(model):
    """The same tensors in a plain transformers model: NNCF's hooks stay behind on the wrapped one."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(model.config)
    wanted = plain.state_dict().keys()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k in wanted}, assign=True)
    for name, buffer in model.named_buffers():  # non-persistent buffers (rotary tables) are not in state_dict
        module_name, _, attr = name.rpartition(".")
        try:
            module = plain.get_submodule(module_name)
        except AttributeError:
            continue
        if attr in module._buffers:
            module._buffers[attr] = buffer
    if getattr(model.config, "tie_word_embeddings", False):
        plain.tie_weights()
    plain.generation_config = model.generation_config
    return plain
