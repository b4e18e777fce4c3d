"""`sqft-ov demo`: the pipeline so far on a model the project builds itself, with nothing to download.

Tiny Llama -> Wanda 50 % (calibrated on generated text) -> INT4 OpenVINO IR -> generation through
openvino_genai, with the sparsity checked in the IR. The full SQFT comparison (`quickstart`) builds on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqft_ov.export import ExportConfig, ExportReport, export
from sqft_ov.output import check_output
from sqft_ov.sparsify import SparsityConfig, SparsityReport, sparsify_folder
from sqft_ov.tiny import TinyModelConfig, build_tiny_model, sample_corpus


@dataclass
class DemoResult:
    sparsity: SparsityReport
    export: ExportReport
    prompt: str
    generated: str


def run_demo(out: str | Path, overwrite: bool = False, progress=None) -> DemoResult:
    from sqft_ov.runtime import open_llm_pipeline

    out = check_output(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    base = build_tiny_model(out / "tiny-llama", TinyModelConfig(arch="llama", layers=4), overwrite=True)
    calibration = out / "calibration.txt"
    calibration.write_text("\n".join(sample_corpus(512, seed=1)) + "\n")
    sparsity = sparsify_folder(base, out / "tiny-llama-wanda50", SparsityConfig("wanda", 0.5), calibration,
                               num_samples=32, seq_len=128, overwrite=True, progress=progress)
    report = export(out / "tiny-llama-wanda50", out / "tiny-llama-wanda50-int4-ov",
                    ExportConfig(weight_format="int4", sym=True, group_size=64), overwrite=True)
    pipe = open_llm_pipeline(report.output, "CPU")
    prompt = "Ana buys 12 apples."
    generated = pipe.generate(prompt, max_new_tokens=16, do_sample=False)
    return DemoResult(sparsity, report, prompt, str(generated))
