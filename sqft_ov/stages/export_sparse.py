"""Sparse weights at export. `--sparse-format`: the IR's sparse decoder MatMuls as SparseFullyConnected nodes
(sqft_ov/io/sparse_fc).

Runs between the conversion (an uncompressed IR) and NNCF's compression, which then compresses only what stayed
a MatMul or Gather (the embeddings and the LM head: INT8 by default). The options that would move the packed
weights or quantize around them are refused before any work. `--sparse-rate`: OpenVINO's own sparse
decompression property, recorded for the loaders.
"""

from __future__ import annotations

from pathlib import Path

from sqft_ov.errors import ConfigError

SPARSE_FORMAT_HELP = ("bitmask-int8 | bitmask-int4: the decoder's sparse linear layers (>= 30 % zeros) as "
                      "SparseFullyConnected nodes (a bitmask + their non-zeros in INT8 / INT4), an OpenVINO extension "
                      "built on first use; the IR's loaders need it (sqft-ov adds it). Faster than dense INT4 only "
                      "where the CPU has AVX-512 VBMI2 + VNNI (see the README).")


def sparse_decompression(ir_dir: Path, config) -> dict:
    """`--sparse-rate`: OpenVINO's own sparse decompression (INT8 weights with INT8 activations, AMX only),
    written into runtime_config.json, and whether it can engage on this CPU."""
    from sqft_ov.io.runtime import SPARSE_RATE, cpu_has_amx, loader_arguments, read_runtime_config, write_runtime_config

    if config.sparse_rate is None:
        return {}
    # Kept in runtime_config.json only: the CPU plugin does not read this property from the IR's rt_info.
    write_runtime_config(ir_dir, {SPARSE_RATE: str(config.sparse_rate)})
    amx = cpu_has_amx()
    reasons = []
    if config.weight_format != "int8-w8a8":
        reasons.append("it needs INT8 weights with INT8 activations (--weight-format int8-w8a8)")
    if not amx:
        reasons.append("this CPU has no AMX")
    return {"property": SPARSE_RATE, "rate": config.sparse_rate, "cpu_has_amx": amx,
            "can_engage_here": not reasons, "why_not": "; ".join(reasons),
            "pass_to_loaders": loader_arguments(read_runtime_config(ir_dir))}


def check_sparse_format(config) -> None:  # an ExportConfig (export imports this module)
    """Refuse what cannot go with --sparse-format (called by ExportConfig.__post_init__)."""
    if config.sparse_format is None:
        return
    from sqft_ov.io.sparse_fc.rewrite import SPARSE_FORMATS

    if config.sparse_format not in SPARSE_FORMATS:
        raise ConfigError(f"unknown --sparse-format {config.sparse_format!r}: choose {', '.join(SPARSE_FORMATS)}")
    conflicts = [flag for flag, on in (("--weight-format int8-w8a8", config.weight_format == "int8-w8a8"),
                                       ("--awq", config.awq), ("--scale-estimation", config.scale_estimation),
                                       ("--gptq", config.gptq), ("--lora-correction", config.lora_correction),
                                       ("--ratio", config.ratio != 1.0), ("--all-layers", config.all_layers),
                                       ("--sparse-rate", config.sparse_rate is not None)) if on]
    if conflicts:
        raise ConfigError(f"--sparse-format packs the sparse layers itself: it does not combine with "
                          f"{', '.join(conflicts)} (--weight-format int4 | int8 | fp16 compresses only the layers "
                          "left dense: embeddings and LM head)")


def check_not_on_grid(config) -> None:
    """A model merged onto a trained INT4 grid: packing would re-quantize it."""
    if config.sparse_format is not None:
        raise ConfigError("this model was merged onto a trained INT4 grid: --sparse-format would re-quantize its "
                          "weights to its own grid; export it without --sparse-format")


def rewrite_ir(xml: Path, sparse_format: str) -> dict:
    """Rewrite the IR at `xml` in place; what the record says of it."""
    import openvino as ov

    from sqft_ov.io.ir import save_over
    from sqft_ov.io.sparse_fc.rewrite import rewrite_sparse

    model = ov.Core().read_model(xml)
    report = rewrite_sparse(model, sparse_format)
    save_over(model, xml)
    return {"sparse_format": sparse_format, "layers": len(report.layers), "weights": report.weights,
            "packed_bytes": report.packed_bytes, "kept_dense": report.kept_dense}
