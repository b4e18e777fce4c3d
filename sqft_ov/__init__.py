"""sqft-ov: sparse, quantized, fine-tuned LLMs deployed through OpenVINO (the SQFT method).

The public API is one verb per pipeline stage, each with its config dataclass. Each stage works on a model in
memory; the folder verbs beside them load, call it and save (Hugging Face layout, adapter folders, IR folders):

    in memory (model in, model or report out)                  folders
    sparsify(model, SparsityConfig(...), calibration)           sparsify_folder(model, out, config, calibration)
    finetune_model(model, tokenizer, data, FinetuneConfig())    finetune(model, data, out, config)
    search_model(trained.adapted, tokenizer, "hill-climb", val)  search(adapter, "hill-climb")  # NLS sub-adapter
    merge_model(trained.adapted, sub) -> (merged model, report)  merge(adapter, out, sub_adapter)
    export_model(model, tokenizer, ir, ExportConfig(...))       export(model, ir, config)
                                                                export_adapter(lora, ir, config)  # base IR + genai LoRA

    importance(model, data, out)                                # EFTNAS: reorder, derive a width space
    evaluate(ir_or_model, data, EvalConfig(...)); bench([...], BenchConfig(...)); tune(ir, TuneConfig(...))
    measure_latency(adapter, table, LatencyConfig(...))         # decode ms per width, for search(max_latency=...)
    write_ovms_repository(ir, repo, OvmsConfig(name=...))       # serve it with OpenVINO Model Server

A QA-SparsePEFT model merged in memory carries its trained INT4 grid (`Int4Grid`), which `export_model` writes
as is. Results are dataclasses (`EvalReport`, `BenchResult`, `TuneResult`, ... with `to_dict()` for JSON); long
verbs take `on_progress(done, total, label)`; errors are `SqftError` or one of its subclasses (`ConfigError`,
`ModelFolderError`, `AdapterMismatchError`, `NncfInternalsChanged`, `ExportIntegrityError`).

Names are imported on first use, so `import sqft_ov` (and the CLI's start) stays light: torch, NNCF and
OpenVINO load only when a verb that needs them is called.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "SqftError": "sqft_ov.errors", "ConfigError": "sqft_ov.errors", "ModelFolderError": "sqft_ov.errors",
    "AdapterMismatchError": "sqft_ov.errors", "NncfInternalsChanged": "sqft_ov.errors",
    "ExportIntegrityError": "sqft_ov.errors",
    # 1 sparsify
    "SparsityConfig": "sqft_ov.stages.sparsify", "SparsityReport": "sqft_ov.stages.sparsify",
    "sparsify": "sqft_ov.stages.sparsify", "sparsify_folder": "sqft_ov.stages.sparsify",
    "deployed_sparsity": "sqft_ov.stages.sparsify",
    # 3 fine-tune, search
    "FinetuneConfig": "sqft_ov.adapters.config", "SFTFormat": "sqft_ov.io.sft_data",
    "FinetuneResult": "sqft_ov.stages.finetune", "finetune": "sqft_ov.stages.finetune",
    "Trained": "sqft_ov.stages.finetune", "finetune_model": "sqft_ov.stages.finetune",
    "SearchResult": "sqft_ov.stages.search", "search": "sqft_ov.stages.search", "search_model": "sqft_ov.stages.search",
    "load_adapted": "sqft_ov.adapters.adapted", "load_for_inference": "sqft_ov.adapters.adapted",
    "ImportanceConfig": "sqft_ov.stages.importance", "ImportanceReport": "sqft_ov.stages.importance",
    "importance": "sqft_ov.stages.importance", "WidthSpace": "sqft_ov.adapters.elastic",
    # 4 merge
    "MergeReport": "sqft_ov.stages.merge", "merge": "sqft_ov.stages.merge", "merge_model": "sqft_ov.stages.merge",
    "save_merged": "sqft_ov.stages.merge", "Int4Grid": "sqft_ov.io.grid",
    # 5 export (INT4/INT8 compression through NNCF happens here)
    "ExportConfig": "sqft_ov.stages.export", "ExportReport": "sqft_ov.stages.export", "export": "sqft_ov.stages.export",
    "export_model": "sqft_ov.stages.export", "export_adapter": "sqft_ov.stages.export_adapter",
    # 6 measure
    "EvalConfig": "sqft_ov.stages.evaluate", "EvalReport": "sqft_ov.stages.evaluate",
    "evaluate": "sqft_ov.stages.evaluate",
    "BenchConfig": "sqft_ov.measure.bench", "BenchModel": "sqft_ov.measure.bench", "bench": "sqft_ov.measure.bench",
    "BenchResult": "sqft_ov.measure.bench",
    "TuneConfig": "sqft_ov.measure.tune", "TuneResult": "sqft_ov.measure.tune", "tune": "sqft_ov.measure.tune",
    "ExportGridResult": "sqft_ov.measure.tune",
    "LatencyConfig": "sqft_ov.measure.latency", "measure_latency": "sqft_ov.measure.latency",
    "LatencyTable": "sqft_ov.io.latency_table", "read_latency_table": "sqft_ov.io.latency_table",
    # 7 serve: an OpenVINO Model Server repository for an IR
    "OvmsConfig": "sqft_ov.stages.ovms", "write_ovms_repository": "sqft_ov.stages.ovms",
    # loading a model as every stage does
    "load_causal_lm": "sqft_ov.io.checkpoint",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'sqft_ov' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
