"""`sqft-ov quickstart`: SQFT's comparison end to end, on the embedded foundation model or on a real one.

base model (the foundation model pretrained here and cached, or `--model`: a Hugging Face folder, a .gguf
file or `smollm2`) -> Wanda 50 % -> every recipe (LoRA, LoRA merged then INT4 post-training, Shears,
SparsePEFT, QA-SparsePEFT, with and without NLS; except with --fast also Dense QA-LoRA, QA-SparsePEFT's recipe on
the dense base, whose difference to QA-SparsePEFT is what the sparsity costs; in the full embedded run also LoNAS
and EFTNAS on the dense base, each as its searched sub-network and its full-width super-network; searches score
on the task's validation split, the test split is scored once per row) -> merge -> export -> exact match
through OpenVINO -> decode speed and size through `bench`. The table mirrors SQFT's: accuracy (mean and min–max over seeds where a row
is trained with several), accuracy relative to unmerged LoRA, deployed precision, merged or not, sparsity
of the deployed weights, decode tokens/s.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqft_ov.errors import ConfigError, SqftError  # noqa: F401 (SqftError: callers catch it from here)
from sqft_ov.io.output import check_output, write_file_atomic
from sqft_ov.quickstart.choices import ptq_options, row_options
from sqft_ov.quickstart.plan import (DENSE_QA, PLAN_JSON, QA_ROWS, UNMERGED, QuickstartPlan, check_same_plan,
                                     plan_record)
from sqft_ov.quickstart.table_text import (accuracy_text, choices_text, decode_ratio_text, decode_text, interval_text,
                                           ratio_text)
from sqft_ov.recipe import Deployment

RESULTS_JSON, RESULTS_MD = "quickstart.json", "quickstart.md"
RUN_ROWS = "deployments.json"  # in each recipe run's folder once it finished: what --resume keeps
FOUNDATION, DENSE, WANDA = "Foundation (dense, no FT)", "Dense (no FT)", "Wanda 50 % (no FT)"
NAS_ROWS = ("LoNAS", "EFTNAS")  # trained on the dense base, one seed: their comparison is with their own full widths
@dataclass
class QuickstartResult:
    out: Path
    plan: QuickstartPlan
    rows: list[Deployment]  # one per trained run: a seeded row appears once per seed
    decode: dict[str, float | None]  # label -> median decode tokens/s (first seed's deployment)
    bench: dict
    seconds: float
    base: str = ""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    choices: dict = field(default_factory=dict)  # choices.json: learning rates chosen on validation, with scores

    @property
    def reference(self) -> Deployment:
        return next(r for r in self.rows if r.label == "LoRA")

    def reference_problem(self) -> str | None:
        """Why ratios to LoRA would mean nothing, or None: LoRA (the reference) must score above every untuned
        base, or it learned nothing and "x % of LoRA" divides by noise."""
        groups = self.grouped()
        lora = _mean([r.accuracy for r in groups.get("LoRA", [])])
        bases = {label: _mean([r.accuracy for r in runs]) for label, runs in groups.items()
                 if runs[0].method == "none"}
        best = max(((a, label) for label, a in bases.items() if a is not None), default=None)
        if lora is None or best is None or lora > best[0]:
            return None
        return (f"LoRA, the reference row, scored {lora:.1%}, not above the untuned {best[1]} ({best[0]:.1%}): it "
                "learned nothing in this plan, so no ratio to it is shown (train longer, or check the learning rate)")

    def grouped(self) -> dict[str, list[Deployment]]:
        groups: dict[str, list[Deployment]] = {}
        for row in self.rows:
            groups.setdefault(row.label, []).append(row)
        return groups

    def table_rows(self) -> list[dict]:
        from sqft_ov.measure.intervals import interval, ratio_interval

        groups = self.grouped()
        learned = self.reference_problem() is None
        ref = _mean([r.accuracy for r in groups["LoRA"]]) if learned else None
        ref_draws = bootstrap_means(groups["LoRA"], "LoRA") if learned else None
        out = []
        for label, runs in groups.items():
            accuracies = [r.accuracy for r in runs if r.accuracy is not None]
            first = runs[0]
            mean = _mean(accuracies)
            draws = bootstrap_means(runs, label)
            accuracy_ci = None if draws is None else interval(draws)
            paired = ratio = None  # the same resampled problems for both rows: the test set's noise cancels
            if draws is not None and ref_draws is not None and draws.shape == ref_draws.shape and label != "LoRA":
                paired, ratio = interval(draws - ref_draws), ratio_interval(draws, ref_draws)
            out.append({"method": label, "accuracy": mean, "accuracy_min": min(accuracies, default=None),
                        "accuracy_max": max(accuracies, default=None), "runs": len(runs),
                        "accuracy_ci95": accuracy_ci, "difference_to_lora_ci95": paired,
                        "relative_to_lora_ci95": ratio,
                        "seeds": [r.seed for r in runs if r.seed is not None],
                        "relative_to_lora": mean / ref if ref and mean is not None else None,
                        "precision": first.precision,
                        "merged": {True: "yes", False: "no", None: "-"}[first.merged if first.method != "none" else None],
                        "sparsity": first.sparsity, "decode_tokens_per_s": self.decode.get(label),
                        **self.decode_spread(label),
                        "size_mib": self.size_mib(label)})
        return out

    def _bench_entry(self, label: str) -> dict:
        return next((e for e in self.bench.get("models", []) if e.get("label") == label and e.get("ok")), {})

    def size_mib(self, label: str) -> float | None:
        """The deployed model's size on disk (IR folder, or model folder + adapter), from the bench run."""
        entry = self._bench_entry(label)
        return entry["size_bytes"] / 2**20 if entry.get("size_bytes") else None

    def decode_spread(self, label: str) -> dict:
        """Decode tok/s min–max over the interleaved repeats, and the per-repeat paired ratio to unmerged LoRA
        (median, min, max): a speed difference is one only where that ratio's range excludes 1."""
        entry = self._bench_entry(label)
        stats, ratio = entry.get("stats", {}).get("decode_tokens_per_s"), (entry.get("ratios") or {}).get(
            "decode_tokens_per_s")
        return {"decode_range": [stats["min"], stats["max"]] if stats else None,
                "decode_vs_lora": {k: ratio[k] for k in ("median", "min", "max")} if ratio else None}

    def markdown(self) -> str:
        lines = ["| method | accuracy (min–max over seeds) | 95 % interval | vs LoRA (95 %) | − LoRA, points (paired 95 %) | "
                 "deployed precision | merged | sparsity | size MiB | decode tok/s (min–max) | decode ÷ LoRA (paired) |",
                 "|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|"]
        for row in self.table_rows():
            lines.append(f"| {row['method']} | {accuracy_text(row)} | {interval_text(row)} | "
                         f"{ratio_text(row)} | {interval_text(row, 'difference_to_lora_ci95')} | "
                         f"{row['precision']} | {row['merged']} | {row['sparsity']:.1%} | "
                         f"{'-' if row['size_mib'] is None else format(row['size_mib'], '.1f')} | "
                         f"{decode_text(row)} | {decode_ratio_text(row)} |")
        problem = self.reference_problem()
        chosen = choices_text(self.choices)
        notes = ([f"\n{chosen}"] if chosen else []) + ([f"\nNote: {problem}."] if problem else [])
        return "\n".join(lines + notes) + "\n"

    def to_dict(self) -> dict:
        return {"base": self.base, "plan": self.plan.__dict__, "choices": self.choices, "seconds": self.seconds,
                "stage_seconds": self.stage_seconds, "reference_problem": self.reference_problem(),
                "table": self.table_rows(),
                "deployments": [r.to_dict() for r in self.rows], "bench": self.bench}


def bootstrap_means(runs: list[Deployment], label: str = "", resamples: int | None = None):
    """A row's mean accuracy for each hierarchical resample (seeds, then test problems, on problem draws shared
    by every row so that rows subtract into paired differences: `sqft_ov.measure.intervals`); None without
    per-problem results."""
    import numpy as np

    from sqft_ov.measure.intervals import RESAMPLES, hierarchical_means, problem_draws

    rows = [[s["correct"] for s in r.evaluation.samples] for r in runs if r.evaluation and r.evaluation.samples]
    if not rows or len({len(r) for r in rows}) != 1:
        return None
    correct = np.asarray(rows, dtype=np.float64)  # seeds x problems
    return hierarchical_means(correct, problem_draws(correct.shape[1], resamples or RESAMPLES), label)


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def is_seeded(plan: QuickstartPlan, label: str) -> bool:
    return plan.seeded is None or label in plan.seeded


def _recipe_runs(plan: QuickstartPlan) -> list[tuple[str, object, dict]]:
    """(label, recipe, options) per fine-tuned row, a run per seed for the seeded rows."""
    from sqft_ov.recipes import eftnas, lonas, lora, qa_sparsepeft, shears, sparsepeft

    lr, tuned, qa = row_options(plan)
    runs = [("LoRA", lora.recipe, tuned | ptq_options(plan)), ("Shears", shears.recipe, tuned),
            ("SparsePEFT", sparsepeft.recipe, tuned), ("SparsePEFT + NLS", sparsepeft.recipe, {"nls": True, **tuned}),
            ("QA-SparsePEFT", qa_sparsepeft.recipe, qa), ("QA-SparsePEFT + NLS", qa_sparsepeft.recipe,
                                                          {"nls": True, **qa})]
    if plan.dense_qa:  # the baselines beside SQFT's own rows (not in --fast)
        unmerged = {**tuned, "int4_base": True, "group_size": plan.qa_grid_group_size,
                    "runtime_adapter": True, "unmerged": False, "merged": False}  # the IR's row only
        runs += [(DENSE_QA, qa_sparsepeft.recipe, qa), (UNMERGED, lora.recipe, unmerged)]
    if plan.nas_rows:
        runs += [("LoNAS", lonas.recipe, lr), ("EFTNAS", eftnas.recipe, lr)]
    out = []
    for name, recipe, options in runs:
        if options.get("nls") and not plan.nls_variants:
            continue
        for k in range(plan.seeds if is_seeded(plan, name) and name not in NAS_ROWS else 1):
            out.append((name, recipe, {**options, "seed": 42 + k}))
    return out


def run_folder(name: str, seed: int) -> str:
    """A recipe run's folder in OUT: `qa-sparsepeft-nls`, `lora-seed43`."""
    return name.lower().replace(" + ", "-").replace(" ", "-") + (f"-seed{seed}" if seed != 42 else "")


def training_order(plan: QuickstartPlan, runs: list[tuple[str, object, dict]]) -> list[tuple[str, object, dict]]:
    """The order the runs train in: on a real model the rows the goal compares (LoRA, QA-SparsePEFT) first,
    seed by seed, so that a run stopped half-way (then `--resume`d) already holds paired comparisons."""
    if plan.seeded is None:
        return runs
    return sorted(runs, key=lambda run: (run[0] not in plan.seeded, run[2]["seed"]))


def quickstart(out: str | Path = "sqft-ov-quickstart", fast: bool = False, overwrite: bool = False,
               cache: str | Path | None = None, on_progress=None, say=print, model: str | Path | None = None,
               seeds: int | None = None, resume: bool = False) -> QuickstartResult:
    """Run the whole comparison into OUT; `say` gets one line per finished stage. `model`: a Hugging Face folder,
    .gguf file or example name (`smollm2`) instead of the embedded foundation model, prompted through its chat
    template. `seeds`: runs per seeded row (3 in the full runs, 1 with `fast`). `resume`: continue in OUT, keeping
    finished recipe runs (their deployments.json) and the sparse base; same plan, `seeds` may grow."""
    import shutil

    from sqft_ov.quickstart.arithmetic import pretraining_text, write_task
    from sqft_ov.quickstart.choices import choose_on_validation
    from sqft_ov.quickstart.foundation import FoundationConfig
    from sqft_ov.stages.evaluate import EvalConfig, evaluate
    from sqft_ov.stages.sparsify import SparsityConfig, deployed_sparsity, sparsify_folder

    plan = QuickstartPlan.make(fast, real_model=model is not None, seeds=seeds)
    if resume and overwrite:
        raise ConfigError("--resume continues the run in OUT and --overwrite replaces it: choose one")
    out = Path(out).expanduser().absolute() if resume else check_output(out, overwrite)
    if resume and not (out / "task").is_dir():
        raise ConfigError(f"--resume: {out} holds no interrupted quickstart (no task/): run without --resume")
    foundation = None if model is not None else FoundationConfig()
    if resume:
        check_same_plan(out, plan, model, foundation and foundation.key)
    start = time.perf_counter()
    stages: dict[str, float] = {}

    def stage(name: str, began: float) -> None:
        stages[name] = time.perf_counter() - began
        say(f"{name}: {stages[name]:.0f} s")

    t = time.perf_counter()
    if model is None:
        from sqft_ov.quickstart.foundation import foundation_model

        base, base_label = foundation_model(foundation, cache, on_progress), FOUNDATION
    else:
        from sqft_ov.io.checkpoint import load_config
        from sqft_ov.io.gguf import resolve_model

        base, base_label = resolve_model(model, cache), DENSE  # a .gguf or `smollm2`: converted once, cached
        load_config(base)
    stage(f"base model ({base})", t)
    if not resume:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
    write_file_atomic(out / PLAN_JSON, json.dumps(plan_record(plan, model, foundation and foundation.key), indent=2),
                      overwrite=True)  # a resumed run's: the same plan, or more seeds

    t = time.perf_counter()
    task = write_task(out / "task", plan.train_examples, plan.test_examples, validation=plan.validation_examples,
                      held_back=plan.test_held_back)
    (out / "calibration.txt").write_text("\n".join(pretraining_text(256, seed=1)) + "\n")
    sparse = out / "sparse-wanda50"
    if not (resume and sparse.is_dir()):  # written atomically: if it is there, it is whole
        sparsify_folder(base, sparse, SparsityConfig("wanda", 0.5), out / "calibration.txt", overwrite=resume,
                        num_samples=plan.calibration[0], seq_len=plan.calibration[1], on_progress=on_progress)
    from sqft_ov.io.sft_data import SFTFormat

    fmt = SFTFormat(chat_template=plan.chat_template)
    rows = [Deployment(label, "none", path, None, None, merged=False, precision="fp32",
                       sparsity=deployed_sparsity(path),
                       evaluation=evaluate(path, task["test"], EvalConfig(data_format=fmt, loss=False), on_progress))
            for label, path in ((base_label, base), (WANDA, sparse))]
    stage("sparsify + evaluate the bases", t)

    plan, choices = choose_on_validation(plan, out, sparse, resume, on_progress, say, stage)
    rows += _recipe_rows(plan, out, sparse, resume, on_progress, say, stage, dense=base)

    t = time.perf_counter()
    report, decode = _bench(rows, plan, on_progress)
    stage("bench", t)

    result = QuickstartResult(out, plan, rows, decode, report, time.perf_counter() - start, str(base), stages, choices)
    if problem := result.reference_problem():
        say(f"warning: {problem}")
    write_file_atomic(out / RESULTS_JSON, json.dumps(result.to_dict(), indent=2, default=str), overwrite=resume)
    write_file_atomic(out / RESULTS_MD, result.markdown(), overwrite=resume)
    return result


def _recipe_rows(plan: QuickstartPlan, out: Path, sparse: Path, resume: bool, on_progress, say, stage,
                 dense: Path | None = None) -> list[Deployment]:
    """Every recipe run of the plan on the sparse base (LoNAS / EFTNAS: on the dense one, as in their papers);
    with `resume`, runs that finished are read back."""
    common = dict(model=sparse, data=out / "task", steps=plan.steps, batch_size=plan.batch_size,
                  chat_template=plan.chat_template, overwrite=True, on_progress=on_progress)
    made_by: dict[tuple[str, int], list[Deployment]] = {}
    runs = _recipe_runs(plan)
    for name, recipe, options in training_order(plan, runs):
        t = time.perf_counter()
        folder = run_folder(name, options["seed"])
        done = out / folder / RUN_ROWS
        if resume and done.is_file():
            made_by[name, options["seed"]] = [Deployment.from_dict(d) for d in json.loads(done.read_text())]
            say(f"recipe {name} (seed {options['seed']}): finished before, kept")
            continue
        on_dense = name in NAS_ROWS or name == DENSE_QA
        if plan.qa_distill and name in QA_ROWS:
            options = {**options, **_lora_teacher(out, options["seed"]), "distill_weight": plan.qa_distill}
        made = recipe(out=out / folder, **{**common, "model": dense if on_dense else sparse}, **options)
        for deployment in made:
            deployment.seed = options["seed"]
            if name in (DENSE_QA, UNMERGED):
                deployment.label = name
        write_file_atomic(done, json.dumps([d.to_dict() for d in made], indent=2, default=str))
        made_by[name, options["seed"]] = made
        stage(f"recipe {name} (seed {options['seed']})", t)
    return [row for name, _, options in runs for row in made_by[name, options["seed"]]]  # in the table's order


def _lora_teacher(out: Path, seed: int) -> dict:
    """The chosen distillation's teacher: the LoRA run of the same seed, trained before the QA rows."""
    lora = out / run_folder("LoRA", seed)
    if not (lora / RUN_ROWS).is_file():
        raise SqftError(f"the QA rows distil from LoRA (seed {seed}), which has not finished in {out}")
    return {"teacher": lora / "adapter"}


def _bench(rows: list[Deployment], plan: QuickstartPlan, on_progress=None) -> tuple[dict, dict[str, float | None]]:
    """Every deployment (the first seed of a seeded row) side by side, unmerged LoRA as the baseline."""
    from sqft_ov.measure.bench import BenchConfig, BenchModel, bench

    deployed, seen = [], set()
    for r in rows:
        if r.method != "none" and r.label not in seen:  # the bases are references, not deployments
            deployed.append(r)
            seen.add(r.label)
    models = [BenchModel(r.model, r.adapter, r.label, r.sub_adapter) for r in deployed]
    baseline = next(i for i, r in enumerate(deployed) if r.label == "LoRA") + 1
    report = bench(models, BenchConfig(prompt_tokens=32, new_tokens=plan.bench_new_tokens,
                                       repeats=plan.bench_repeats, warmup=1, baseline=baseline,
                                       bandwidth_gib=0), on_progress)
    decode = {e["label"]: e["stats"]["decode_tokens_per_s"]["median"] if e["ok"] else None for e in report.models}
    return report.to_dict(), decode
