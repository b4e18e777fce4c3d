"""How export turns a model into an uncompressed (or trained-grid INT4) IR: optimum-intel's conversion.

A plain folder goes through `main_export`, as `optimum-cli export openvino` runs it; a model in memory through
`export_from_model` (what `main_export` does after loading), with per-block KV-cache shapes for a cut
sub-network, or with NNCF quantizers set to a carried INT4 grid so that the trained codes are written as they are.
Compression, the zero check and the record are `export`'s.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

from sqft_ov.io.grid import grid_of

_OPTIMUM_DTYPE = {"fp16": "fp16", "int8": "int8", "int4": "int4", "int8-w8a8": "int8"}


def model_converter(model, tokenizer, config) -> Callable[[Path], dict]:
    """How a model in memory is converted (`config`: its ExportConfig): on its carried INT4 grid, cut to per-block
    widths, or as it is."""
    from sqft_ov.io.blocks import WIDTHS_KEY

    if grid_of(model) is not None:
        return partial(_export_on_grid, model, tokenizer, config=config)
    if getattr(model.config, WIDTHS_KEY, None):
        return partial(_export_cut, model, tokenizer, config=config)
    return partial(_export_model, model, tokenizer, config=config)


def _export_on_grid(model, tokenizer, out: Path, config) -> dict:
    """Write the merged weights' own INT4 codes: NNCF quantizers set to the carried grid, stripped to packed INT4
    (in place: the model is spent afterwards).

    The weights already lie on the grid, so quantizing them with it reproduces their codes exactly; optimum's
    `export_from_model` then keeps the packed INT4 tensors bit for bit.
    """
    import nncf
    import torch
    from optimum.exporters.openvino.convert import export_from_model, export_tokenizer

    from sqft_ov.adapters.qa_lora import compress_with_lora, load_grid

    grid = grid_of(model)
    model = compress_with_lora(model, grid.sym, grid.group_size, rank=1, nls=False, masked=False,
                               init_adapters=False)
    load_grid(model, grid.tensors)
    example = {"input_ids": torch.ones(1, 8, dtype=torch.long)}
    model = nncf.strip(model, do_copy=False, strip_format=nncf.StripFormat.DQ, example_input=example)
    export_from_model(model, out, task="text-generation-with-past", preprocessors=[tokenizer],
                      trust_remote_code=config.trust_remote_code)
    export_tokenizer(tokenizer, out, task="text-generation-with-past")
    return {"nncf_mode": "int4_sym" if grid.sym else "int4_asym", "group_size": grid.group_size,
            "sym": grid.sym, "trained_int4_grid": True}


def _export_model(model, tokenizer, out: Path, config) -> dict:
    """optimum-intel's conversion of a model in memory (what `main_export` does after loading a folder)."""
    from optimum.exporters.openvino.convert import export_from_model, export_tokenizer
    from optimum.intel import OVConfig

    export_from_model(model, out, task="text-generation-with-past", preprocessors=[tokenizer],
                      ov_config=OVConfig(dtype=_OPTIMUM_DTYPE[config.weight_format]),
                      trust_remote_code=config.trust_remote_code)
    export_tokenizer(tokenizer, out, task="text-generation-with-past")
    return {}


def convert_folder(model_dir: Path, out: Path, config) -> dict:
    """optimum-intel's conversion of a folder, as `optimum-cli export openvino` runs it."""
    from optimum.exporters.openvino import main_export
    from optimum.intel import OVConfig

    # The dtype optimum-cli passes for each format (it decides the loading precision: 16-bit checkpoints stay
    # 16-bit); an explicit OVConfig also stops optimum from silently compressing models of 1e9+ parameters
    # to INT8 when fp16 was asked for.
    main_export(str(model_dir), out, task="text-generation-with-past", convert_tokenizer=True,
                ov_config=OVConfig(dtype=_OPTIMUM_DTYPE[config.weight_format]),
                trust_remote_code=config.trust_remote_code, local_files_only=True)
    return {}


def _cut_export_config(model, tokenizer):
    """optimum-intel's export config for the model, with dummy KV caches of each block's own KV head count.

    optimum traces the model with one KV-cache shape for every block (from config.json); a sub-network whose
    blocks kept different numbers of KV groups needs each block's own (the IR then carries them).
    """
    import optimum.exporters.openvino  # noqa: F401  (registers the OpenVINO export configs)
    from optimum.exporters.tasks import TasksManager

    from sqft_ov.io.blocks import layer_widths

    widths = layer_widths(model.config)
    constructor = TasksManager.get_exporter_config_constructor(model=model, exporter="openvino",
                                                               task="text-generation-with-past",
                                                               library_name="transformers")
    base = constructor.func
    pkv = base.DUMMY_PKV_GENERATOR_CLASS

    class PerBlockPastKeyValues(pkv):
        def generate(self, input_name, framework="pt", int_dtype="int64", float_dtype="fp32"):
            pairs = super().generate(input_name, framework=framework, int_dtype=int_dtype, float_dtype=float_dtype)
            return [(k[:, :w.kv_groups].contiguous(), v[:, :w.kv_groups].contiguous())
                    for (k, v), w in zip(pairs, widths)]

    cut = type(f"Cut{base.__name__}", (base,), {
        "DUMMY_PKV_GENERATOR_CLASS": PerBlockPastKeyValues,
        "DUMMY_INPUT_GENERATOR_CLASSES": tuple(PerBlockPastKeyValues if c is pkv else c
                                               for c in base.DUMMY_INPUT_GENERATOR_CLASSES)})
    return cut(model.config, int_dtype="int64", float_dtype="fp32", preprocessors=[tokenizer], use_past_in_inputs=True,
               **constructor.keywords)


def _export_cut(model, tokenizer, out: Path, config) -> dict:
    """A sub-network with per-block widths (`sqft_layer_widths`), converted by optimum-intel."""
    from optimum.exporters.openvino.convert import export_from_model, export_tokenizer
    from optimum.intel import OVConfig

    export_from_model(model, out, task="text-generation-with-past", preprocessors=[tokenizer],
                      ov_config=OVConfig(dtype=_OPTIMUM_DTYPE[config.weight_format]),
                      custom_export_configs={"model": _cut_export_config(model, tokenizer)},
                      trust_remote_code=config.trust_remote_code)
    export_tokenizer(tokenizer, out, task="text-generation-with-past")
    return {"per_block_widths": True}
