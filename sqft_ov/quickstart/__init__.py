"""The embedded world `sqft-ov quickstart` runs on: nothing to download, everything built here.

* `arithmetic`: generated word problems (a foundation distribution and a shifted downstream task).
* `tiny`: tiny random Llama / Mistral / Qwen2 / Phi-3 models with locally trained tokenizers (tests, benchmarks).
* `foundation`: a small Llama pretrained here on the foundation problems, cached.
* `comparison`: SQFT's table end to end on it (`quickstart()`), the command's Python entry point.
* `lm_eval_tasks`: an lm-evaluation-harness task folder over local sqft-ov data (`lm_eval --include_path`).
"""
