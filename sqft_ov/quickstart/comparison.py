"""`sqft-ov quickstart`: SQFT's comparison in miniature, end to end, on nothing but what the project builds.

foundation model (pretrained here, cached) -> Wanda 50 % -> every recipe (LoRA, Shears, SparsePEFT,
QA-SparsePEFT, with and without NLS) -> merge -> export -> exact match through OpenVINO -> decode speed
through `bench`. The table mirrors SQFT's: accuracy, accuracy relative to unmerged LoRA, deployed
precision, merged or not, sparsity of the deployed weights, decode tokens/s.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqft_ov.io.output import check_output, write_file_atomic
from sqft_ov.recipe import Deployment

RESULTS_JSON, RESULTS_MD = "quickstart.json", "quickstart.md"
FOUNDATION, WANDA = "Foundation (dense, no FT)", "Wanda 50 % (no FT)"


@dataclass(frozen=True)
class QuickstartPlan:
    """How much work each stage gets: the full run, or `--fast` (a smoke test of every stage)."""

    fast: bool
    train_examples: int
    test_examples: int
    steps: int  # fine-tuning steps per recipe
    nls_variants: bool  # SparsePEFT / QA-SparsePEFT + NLS rows (Shears always uses NLS)
    bench_repeats: int
    bench_new_tokens: int

    @classmethod
    def make(cls, fast: bool) -> "QuickstartPlan":
        if fast:
            return cls(True, 600, 40, 40, False, 1, 16)
        return cls(False, 2000, 200, 600, True, 3, 32)


@dataclass
class QuickstartResult:
    out: Path
    plan: QuickstartPlan
    rows: list[Deployment]
    decode: dict[str, float | None]  # label -> median decode tokens/s
    bench: dict
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def reference(self) -> Deployment:
        return next(r for r in self.rows if r.label == "LoRA")

    def table_rows(self) -> list[dict]:
        ref = self.reference.accuracy
        return [{"method": r.label, "accuracy": r.accuracy,
                 "relative_to_lora": r.accuracy / ref if ref else None, "precision": r.precision,
                 "merged": {True: "yes", False: "no", None: "-"}[r.merged if r.method != "none" else None],
                 "sparsity": r.sparsity, "decode_tokens_per_s": self.decode.get(r.label)} for r in self.rows]

    def markdown(self) -> str:
        lines = ["| method | accuracy | vs LoRA | deployed precision | merged | sparsity | decode tok/s |",
                 "|---|---:|---:|---|---|---:|---:|"]
        for row in self.table_rows():
            lines.append(f"| {row['method']} | {row['accuracy']:.1%} | {_rel(row['relative_to_lora'])} | "
                         f"{row['precision']} | {row['merged']} | {row['sparsity']:.1%} | "
                         f"{_tok(row['decode_tokens_per_s'])} |")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        return {"plan": self.plan.__dict__, "seconds": self.seconds, "stage_seconds": self.stage_seconds,
                "table": self.table_rows(), "deployments": [r.to_dict() for r in self.rows], "bench": self.bench}


def _rel(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _tok(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def quickstart(out: str | Path = "sqft-ov-quickstart", fast: bool = False, overwrite: bool = False,
               cache: str | Path | None = None, progress=None, say=print) -> QuickstartResult:
    """Run the whole comparison into OUT; `say` gets one line per finished stage."""
    import shutil

    from sqft_ov.quickstart.arithmetic import pretraining_text, write_task
    from sqft_ov.quickstart.foundation import FAST, FoundationConfig, foundation_model
    from sqft_ov.recipes import lora, qa_sparsepeft, shears, sparsepeft
    from sqft_ov.stages.bench import BenchConfig, BenchModel, bench
    from sqft_ov.stages.evaluate import EvalConfig, evaluate
    from sqft_ov.stages.sparsify import SparsityConfig, deployed_sparsity, sparsify_folder

    plan = QuickstartPlan.make(fast)
    out = check_output(out, overwrite)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    start = time.perf_counter()
    stages: dict[str, float] = {}

    def stage(name: str, began: float) -> None:
        stages[name] = time.perf_counter() - began
        say(f"{name}: {stages[name]:.0f} s")

    t = time.perf_counter()
    base = foundation_model(FAST if fast else FoundationConfig(), cache, progress)
    stage(f"foundation model ({base})", t)

    t = time.perf_counter()
    task = write_task(out / "task", plan.train_examples, plan.test_examples)
    (out / "calibration.txt").write_text("\n".join(pretraining_text(256, seed=1)) + "\n")
    sparse = out / "sparse-wanda50"
    sparsify_folder(base, sparse, SparsityConfig("wanda", 0.5), out / "calibration.txt", num_samples=64,
                    seq_len=128, progress=progress)
    rows = [Deployment(label, "none", path, None, None, merged=False, precision="fp32",
                       sparsity=deployed_sparsity(path), evaluation=evaluate(path, task["test"], EvalConfig(), progress))
            for label, path in ((FOUNDATION, base), (WANDA, sparse))]
    stage("sparsify + evaluate the bases", t)

    common = dict(model=sparse, data=out / "task", steps=plan.steps, overwrite=True, progress=progress)
    runs = [("LoRA", lora.recipe, {}), ("Shears", shears.recipe, {}), ("SparsePEFT", sparsepeft.recipe, {}),
            ("SparsePEFT + NLS", sparsepeft.recipe, {"nls": True}), ("QA-SparsePEFT", qa_sparsepeft.recipe, {}),
            ("QA-SparsePEFT + NLS", qa_sparsepeft.recipe, {"nls": True})]
    for name, recipe, options in runs:
        if options.get("nls") and not plan.nls_variants:
            continue
        t = time.perf_counter()
        rows += recipe(out=out / name.lower().replace(" + ", "-").replace(" ", "-"), **common, **options)
        stage(f"recipe {name}", t)

    t = time.perf_counter()
    deployed = [r for r in rows if r.method != "none"]  # the bases are references, not deployments
    models = [BenchModel(r.model, r.adapter, r.label, r.sub_adapter) for r in deployed]
    baseline = next(i for i, r in enumerate(deployed) if r.label == "LoRA") + 1
    report = bench(models, BenchConfig(prompt_tokens=32, new_tokens=plan.bench_new_tokens,
                                       repeats=plan.bench_repeats, warmup=1, baseline=baseline,
                                       bandwidth_gib=0), progress)
    decode = {e["label"]: e["stats"]["decode_tokens_per_s"]["median"] if e["ok"] else None
              for e in report["models"]}
    stage("bench", t)

    result = QuickstartResult(out, plan, rows, decode, report, time.perf_counter() - start, stages)
    write_file_atomic(out / RESULTS_JSON, json.dumps(result.to_dict(), indent=2, default=str))
    write_file_atomic(out / RESULTS_MD, result.markdown())
    return result
