"""Hostile inputs, every command: exit 2, one line `error: ...` that names the fix, inputs untouched, nothing written.

The cases run the CLI in this process (`sqft_ov.cli.main`, as the `sqft-ov` script does) so that fifty of them
cost seconds rather than fifty interpreter starts; an exception other than our one-line error escapes and
fails the case, as a traceback would have shown it to a user.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from conftest import run_cli, train


@dataclass
class World:
    """The inputs the cases start from: built once, copied before a case corrupts them."""

    tiny: Path
    sparse: Path
    adapter: Path  # sparsepeft, fixed rank
    nls: Path  # sparsepeft + NLS
    qa: Path  # qa-sparsepeft
    merged_qa: Path
    ir: Path
    data: Path  # prompt/response JSONL
    calibration: Path
    elastic: Path  # sparsepeft with elastic MLP widths and KV groups (2 steps)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_models, sparse_models, trained, exported, calibration_txt) -> World:
    from sqft_ov.stages.merge import merge

    root = tmp_path_factory.mktemp("hostile")
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {a} plus {a}?", "response": f"{2 * a}. #### {2 * a}"})
                            + "\n" for a in range(24)))
    merged_qa = root / "merged-qa"
    merge(trained("qa-sparsepeft"), merged_qa)
    elastic = root / "elastic"
    train(sparse_models["llama"], data, elastic, method="sparsepeft", max_steps=2, rank=8, mlp_widths=(1.0, 0.5),
          head_widths=(1.0, 0.5))
    return World(tiny_models["llama"], sparse_models["llama"], trained("sparsepeft"), trained("sparsepeft", True),
                 trained("qa-sparsepeft"), merged_qa, exported("llama", "int4"), data, calibration_txt, elastic)


def copy(src: Path, dst: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)
    return dst


def edit_json(path: Path, **changes) -> None:
    record = json.loads(path.read_text())
    record.update(changes)
    path.write_text(json.dumps(record))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def set_weight(folder: Path, value: float) -> None:
    """Put one NaN/inf into a decoder weight, re-saved as safetensors the way a diverged run would."""
    from safetensors.torch import load_file, save_file

    file = folder / "model.safetensors"
    tensors = load_file(file)
    name = next(k for k in tensors if k.endswith("mlp.up_proj.weight"))
    tensors[name][0, 0] = value
    save_file(tensors, file, metadata={"format": "pt"})


def latency_record(adapter: Path) -> dict:
    """A valid latency table for the world's elastic adapter (chosen times: 1 to 4 ms per token)."""
    from test_latency_search import table_record

    return table_record(adapter)


# Each case: (tmp, world) -> (argv, output that must not appear, fragments the error line must hold).
# Inputs a case corrupts are copies under tmp; everything under tmp and the world is hashed before and after.
Case = Callable[[Path, World], tuple[list, Path, tuple[str, ...]]]
CASES: dict[str, Case] = {}


def case(name: str):
    def register(fn: Case) -> Case:
        CASES[name] = fn
        return fn
    return register


# --- model folders ---------------------------------------------------------------------------------------------

@case("sparsify-truncated-safetensors")
def _(tmp, w):
    m = copy(w.tiny, tmp / "m")
    truncate(m / "model.safetensors")
    return ["sparsify", m, tmp / "out", "--method", "magnitude"], tmp / "out", ("model.safetensors", "re-save")


@case("export-corrupt-safetensors")
def _(tmp, w):
    m = copy(w.sparse, tmp / "m")
    (m / "model.safetensors").write_bytes(b"\xff" * 64 + (m / "model.safetensors").read_bytes()[64:])
    return ["export", m, tmp / "out", "--weight-format", "fp16"], tmp / "out", ("model.safetensors",)


@case("finetune-truncated-safetensors")
def _(tmp, w):
    m = copy(w.sparse, tmp / "m")
    truncate(m / "model.safetensors", 0.9)
    return ["finetune", m, w.data, tmp / "out", "--max-steps", "1"], tmp / "out", ("model.safetensors",)


@case("sparsify-config-not-json")
def _(tmp, w):
    m = copy(w.tiny, tmp / "m")
    (m / "config.json").write_text("{ this is not json")
    return ["sparsify", m, tmp / "out", "--method", "magnitude"], tmp / "out", ("config.json",)


@case("export-config-missing")
def _(tmp, w):
    m = copy(w.sparse, tmp / "m")
    (m / "config.json").unlink()
    return ["export", m, tmp / "out"], tmp / "out", ("no config.json",)


@case("eval-tokenizer-missing")
def _(tmp, w):
    m = copy(w.sparse, tmp / "m")
    for f in m.glob("tokenizer*"):
        f.unlink()
    return ["eval", m, w.data, "--json", tmp / "out.json"], tmp / "out.json", ("tokenizer",)


@case("finetune-tokenizer-missing")
def _(tmp, w):
    m = copy(w.sparse, tmp / "m")
    for f in m.glob("tokenizer*"):
        f.unlink()
    return ["finetune", m, w.data, tmp / "out", "--max-steps", "1"], tmp / "out", ("tokenizer",)


@case("sparsify-pickle-only")
def _(tmp, w):
    import torch
    from safetensors.torch import load_file

    m = copy(w.tiny, tmp / "m")
    torch.save(load_file(m / "model.safetensors"), m / "pytorch_model.bin")
    (m / "model.safetensors").unlink()
    return ["sparsify", m, tmp / "out", "--method", "magnitude"], tmp / "out", ("safetensors", "save_pretrained")


@case("export-pickle-only")
def _(tmp, w):
    m = copy(w.sparse, tmp / "m")
    (m / "model.safetensors").rename(m / "pytorch_model.bin")
    return ["export", m, tmp / "out"], tmp / "out", ("safetensors",)


@case("sparsify-nan-weight")
def _(tmp, w):
    m = copy(w.tiny, tmp / "m")
    set_weight(m, float("nan"))
    return ["sparsify", m, tmp / "out", "--method", "magnitude"], tmp / "out", ("not finite", "up_proj")


@case("export-inf-weight")
def _(tmp, w):
    m = copy(w.sparse, tmp / "m")
    set_weight(m, float("inf"))
    return ["export", m, tmp / "out", "--weight-format", "int4", "--group-size", "64"], tmp / "out", ("not finite",)


@case("finetune-nan-weight")
def _(tmp, w):
    m = copy(w.sparse, tmp / "m")
    set_weight(m, float("nan"))
    return ["finetune", m, w.data, tmp / "out", "--max-steps", "1"], tmp / "out", ("not finite",)


@case("sparsify-model-is-a-file")
def _(tmp, w):
    return ["sparsify", w.data, tmp / "out", "--method", "magnitude"], tmp / "out", ("data.jsonl", "folder")


@case("finetune-no-target-modules")
def _(tmp, w):
    return (["finetune", w.sparse, w.data, tmp / "out", "--max-steps", "1", "--target-modules", "w_nope"],
            tmp / "out", ("w_nope", "--target-modules"))


@case("finetune-mlp-width-outside-unit-interval")
def _(tmp, w):
    return (["finetune", w.sparse, w.data, tmp / "out", "--max-steps", "1", "--mlp-widths", "1.0 1.5"], tmp / "out",
            ("--mlp-widths 1.5", "(0, 1]"))


@case("finetune-mlp-width-larger-than-layer")
def _(tmp, w):
    return (["finetune", w.sparse, w.data, tmp / "out", "--max-steps", "1", "--mlp-widths", "1.0 9999"], tmp / "out",
            ("9999", "larger than the layer"))


@case("finetune-head-width-breaks-gqa")
def _(tmp, w):
    return (["finetune", w.sparse, w.data, tmp / "out", "--max-steps", "1", "--head-widths", "1.0 0.3"], tmp / "out",
            ("grouped-query attention", "0.50"))


@case("finetune-search-space-for-another-model")
def _(tmp, w):
    space = tmp / "space.json"
    space.write_text(json.dumps({"blocks": [{"mlp": [256, 128], "kv_groups": [2, 1]}] * 5}))
    return (["finetune", w.sparse, w.data, tmp / "out", "--max-steps", "1", "--search-space", space], tmp / "out",
            ("5 decoder blocks", "has 2"))


@case("finetune-widths-with-qa-sparsepeft")
def _(tmp, w):
    return (["finetune", w.sparse, w.data, tmp / "out", "--max-steps", "1", "--method", "qa-sparsepeft",
             "--mlp-widths", "1.0 0.5"], tmp / "out", ("qa-sparsepeft", "INT4 grid"))


@case("importance-keep-out-of-range")
def _(tmp, w):
    return ["importance", w.tiny, w.data, tmp / "out", "--keep", "1.5"], tmp / "out", ("--keep",)


@case("importance-missing-model")
def _(tmp, w):
    return ["importance", tmp / "nope", w.data, tmp / "out"], tmp / "out", ("does not exist",)


@case("search-max-size-without-elastic-widths")
def _(tmp, w):
    return (["search", w.nls, "--strategy", "max", "--max-size", "0.5", "--save", tmp / "sub.json"], tmp / "sub.json",
            ("--max-size", "elastic widths"))


@case("search-max-latency-without-latency-table")
def _(tmp, w):
    return (["search", w.elastic, "--strategy", "max", "--max-latency", "5", "--save", tmp / "sub.json"],
            tmp / "sub.json", ("--latency-table", "sqft-ov latency"))


@case("search-latency-table-without-elastic-widths")
def _(tmp, w):
    table = tmp / "table.json"
    table.write_text(json.dumps(latency_record(w.elastic)))
    return (["search", w.nls, "--strategy", "max", "--latency-table", table, "--save", tmp / "sub.json"],
            tmp / "sub.json", ("latency table", "elastic widths"))


@case("search-latency-table-missing")
def _(tmp, w):
    return (["search", w.elastic, "--strategy", "min", "--max-latency", "2", "--latency-table", tmp / "none.json",
             "--save", tmp / "sub.json"], tmp / "sub.json", ("none.json", "does not exist", "sqft-ov latency"))


@case("search-latency-table-not-json")
def _(tmp, w):
    (tmp / "table.json").write_text("{ not json")
    return (["search", w.elastic, "--strategy", "min", "--max-latency", "2", "--latency-table", tmp / "table.json",
             "--save", tmp / "sub.json"], tmp / "sub.json", ("not valid JSON",))


@case("search-latency-table-point-missing")
def _(tmp, w):
    record = latency_record(w.elastic)
    record["points"] = record["points"][1:]
    (tmp / "table.json").write_text(json.dumps(record))
    return (["search", w.elastic, "--strategy", "min", "--max-latency", "2", "--latency-table", tmp / "table.json",
             "--save", tmp / "sub.json"], tmp / "sub.json", ("malformed", "MLP width 256 with 2 KV groups"))


@case("search-latency-table-other-widths")
def _(tmp, w):
    record = latency_record(w.elastic)
    record["space"] = {"blocks": [{"mlp": [256], "kv_groups": [2, 1]}] * 2}
    (tmp / "table.json").write_text(json.dumps(record))
    return (["search", w.elastic, "--strategy", "min", "--max-latency", "2", "--latency-table", tmp / "table.json",
             "--save", tmp / "sub.json"], tmp / "sub.json", ("other widths", "sqft-ov latency"))


@case("search-max-latency-unreachable")
def _(tmp, w):
    (tmp / "table.json").write_text(json.dumps(latency_record(w.elastic)))
    return (["search", w.elastic, "--strategy", "hill-climb", "--max-latency", "0.5", "--latency-table",
             tmp / "table.json", "--save", tmp / "sub.json"], tmp / "sub.json",
            ("no sub-network meets --max-latency 0.5 ms", "fastest"))


@case("latency-adapter-without-elastic-widths")
def _(tmp, w):
    return ["latency", w.nls, tmp / "table.json"], tmp / "table.json", ("elastic widths", "--mlp-widths")


@case("latency-not-a-finetune-output")
def _(tmp, w):
    return ["latency", w.sparse, tmp / "table.json"], tmp / "table.json", ("finetune output",)


@case("latency-zero-repeats")
def _(tmp, w):
    return ["latency", w.elastic, tmp / "table.json", "--repeats", "0"], tmp / "table.json", ("--repeats",)


@case("sparsify-missing-model")
def _(tmp, w):
    return ["sparsify", tmp / "nope", tmp / "out", "--method", "magnitude"], tmp / "out", ("does not exist",)


@case("export-not-causal")
def _(tmp, w):
    from transformers import BertConfig

    BertConfig(architectures=["BertForMaskedLM"]).save_pretrained(tmp / "bert")
    return ["export", tmp / "bert", tmp / "out"], tmp / "out", ("not a causal language model",)


@case("export-output-exists")
def _(tmp, w):
    (tmp / "out").mkdir()
    (tmp / "out" / "keep.txt").write_text("precious")  # hashed before and after, like every input
    return ["export", w.sparse, tmp / "out", "--weight-format", "fp16"], tmp / "none", ("--overwrite",)


# --- adapter folders, edited -----------------------------------------------------------------------------------

@case("merge-adapter-wrong-method")
def _(tmp, w):
    a = copy(w.adapter, tmp / "a")
    edit_json(a / "sqft_adapter.json", method="dora")
    return ["merge", a, tmp / "out"], tmp / "out", ("dora", "sqft_adapter.json")


@case("merge-adapter-wrong-rank")
def _(tmp, w):
    a = copy(w.adapter, tmp / "a")
    edit_json(a / "sqft_adapter.json", rank=4, rank_space=[4])
    return ["merge", a, tmp / "out"], tmp / "out", ("rank",)


@case("merge-adapter-wrong-targets")
def _(tmp, w):
    a = copy(w.adapter, tmp / "a")
    edit_json(a / "sqft_adapter.json", target_modules=["o_proj"])
    return ["merge", a, tmp / "out"], tmp / "out", ("o_proj",)


@case("merge-adapter-other-base")
def _(tmp, w):
    a = copy(w.adapter, tmp / "a")
    edit_json(a / "sqft_adapter.json", base_fingerprint="0" * 64)
    return ["merge", a, tmp / "out"], tmp / "out", ("--base",)


@case("merge-adapter-weights-missing")
def _(tmp, w):
    a = copy(w.adapter, tmp / "a")
    (a / "sqft_trainable.safetensors").unlink()
    return ["merge", a, tmp / "out"], tmp / "out", ("sqft_trainable.safetensors",)


@case("merge-adapter-json-not-json")
def _(tmp, w):
    a = copy(w.adapter, tmp / "a")
    (a / "sqft_adapter.json").write_text("[")
    return ["merge", a, tmp / "out"], tmp / "out", ("sqft_adapter.json",)


@case("eval-adapter-for-other-model")
def _(tmp, w):
    return (["eval", w.tiny, w.data, "--adapter", w.qa, "--json", tmp / "out.json"], tmp / "out.json",
            ("--base",))


@case("search-fixed-rank-adapter")
def _(tmp, w):
    return ["search", w.adapter, "--save", tmp / "out.json"], tmp / "out.json", ("--nls",)


@case("search-unknown-strategy")
def _(tmp, w):
    return (["search", w.nls, "--strategy", "genetic", "--save", tmp / "out.json"], tmp / "out.json",
            ("genetic", "hill-climb"))


@case("merge-sub-adapter-out-of-space")
def _(tmp, w):
    (tmp / "cfg.json").write_text(json.dumps({"ranks": [99, 99]}))
    return ["merge", w.nls, tmp / "out", "--sub-adapter", tmp / "cfg.json"], tmp / "out", ("99",)


@case("merge-sub-adapter-not-json")
def _(tmp, w):
    (tmp / "cfg.json").write_text("ranks: 8")
    return ["merge", w.nls, tmp / "out", "--sub-adapter", tmp / "cfg.json"], tmp / "out", ("cfg.json",)


# --- merged INT4 grids and IRs ---------------------------------------------------------------------------------

@case("export-grid-file-missing")
def _(tmp, w):
    m = copy(w.merged_qa, tmp / "m")
    (m / "sqft_int4_grid.safetensors").unlink()
    return ["export", m, tmp / "out"], tmp / "out", ("sqft_int4_grid",)


@case("export-grid-json-missing")
def _(tmp, w):
    m = copy(w.merged_qa, tmp / "m")
    (m / "sqft_int4_grid.json").unlink()
    return ["export", m, tmp / "out"], tmp / "out", ("sqft_int4_grid",)


@case("export-grid-mismatched")
def _(tmp, w):
    m = copy(w.merged_qa, tmp / "m")
    edit_json(m / "sqft_int4_grid.json", group_size=32)
    return ["export", m, tmp / "out"], tmp / "out", ("grid",)


@case("export-grid-vs-group-size")
def _(tmp, w):
    return ["export", w.merged_qa, tmp / "out", "--group-size", "32"], tmp / "out", ("--group-size", "64")


@case("eval-ir-bin-missing")
def _(tmp, w):
    ir = copy(w.ir, tmp / "ir")
    (ir / "openvino_model.bin").unlink()
    return ["eval", ir, w.data, "--json", tmp / "out.json"], tmp / "out.json", ("openvino_model.bin",)


@case("bench-ir-bin-missing")
def _(tmp, w):
    ir = copy(w.ir, tmp / "ir")
    (ir / "openvino_model.bin").unlink()
    return (["bench", ir, "--repeats", "1", "--bandwidth-gib", "0", "--json", tmp / "out.json"], tmp / "out.json",
            ("openvino_model.bin",))


@case("tune-ir-xml-corrupt")
def _(tmp, w):
    ir = copy(w.ir, tmp / "ir")
    truncate(ir / "openvino_model.xml", 0.3)
    return ["tune", ir, "--budget-minutes", "0.1"], ir / "runtime_config.json", ("openvino_model.xml",)


@case("ovms-ir-without-tokenizer")
def _(tmp, w):
    ir = copy(w.ir, tmp / "ir")
    (ir / "openvino_tokenizer.xml").unlink()
    return ["ovms", ir, tmp / "repo"], tmp / "repo", ("openvino_tokenizer.xml", "tokenizer IRs")


# --- data ------------------------------------------------------------------------------------------------------

@case("sparsify-calibration-not-parquet")
def _(tmp, w):
    (tmp / "bad.parquet").write_bytes(b"not a parquet file")
    return ["sparsify", w.tiny, tmp / "out", "--dataset", tmp / "bad.parquet"], tmp / "out", ("cannot read",)


@case("finetune-data-not-utf8")
def _(tmp, w):
    (tmp / "d.jsonl").write_bytes(b'{"prompt": "a\xff\xfe", "response": "b #### 1"}\n')
    return ["finetune", w.sparse, tmp / "d.jsonl", tmp / "out", "--max-steps", "1"], tmp / "out", ("UTF-8",)


@case("sparsify-calibration-not-utf8")
def _(tmp, w):
    (tmp / "c.txt").write_bytes(b"some text \xff\xfe\xfd more\n" * 20)
    return (["sparsify", w.tiny, tmp / "out", "--dataset", tmp / "c.txt"], tmp / "out", ("UTF-8",))


@case("finetune-data-empty-lines")
def _(tmp, w):
    (tmp / "d.jsonl").write_text("\n\n   \n")
    return ["finetune", w.sparse, tmp / "d.jsonl", tmp / "out", "--max-steps", "1"], tmp / "out", ("d.jsonl", "empty")


@case("finetune-data-100k-prompt")
def _(tmp, w):
    (tmp / "d.jsonl").write_text(json.dumps({"prompt": "x " * 50_000, "response": "1 #### 1"}) + "\n")
    return ["finetune", w.sparse, tmp / "d.jsonl", tmp / "out", "--max-steps", "1"], tmp / "out", ("--max-length",)


@case("finetune-jsonl-one-bad-row")
def _(tmp, w):
    lines = w.data.read_text().splitlines()
    lines[5] = lines[5][:-3]
    (tmp / "d.jsonl").write_text("\n".join(lines) + "\n")
    return ["finetune", w.sparse, tmp / "d.jsonl", tmp / "out", "--max-steps", "1"], tmp / "out", ("line 6",)


@case("finetune-csv-without-fields")
def _(tmp, w):
    (tmp / "d.csv").write_text("question,answer\nWhat is 1 plus 1?,2\n")
    return (["finetune", w.sparse, tmp / "d.csv", tmp / "out", "--max-steps", "1"], tmp / "out",
            ("--prompt-field", "question"))


@case("eval-data-without-fields")
def _(tmp, w):
    (tmp / "d.jsonl").write_text(json.dumps({"q": "What is 1 plus 1?", "a": "#### 2"}) + "\n")
    return ["eval", w.ir, tmp / "d.jsonl", "--json", tmp / "out.json"], tmp / "out.json", ("--prompt-field",)


@case("finetune-data-missing")
def _(tmp, w):
    return ["finetune", w.sparse, tmp / "nope.jsonl", tmp / "out"], tmp / "out", ("nope.jsonl",)


# --- limits ----------------------------------------------------------------------------------------------------

@case("sparsify-ratio-one")
def _(tmp, w):
    return ["sparsify", w.tiny, tmp / "out", "--method", "magnitude", "--ratio", "1"], tmp / "out", ("--ratio",)


@case("sparsify-ratio-negative")
def _(tmp, w):
    return ["sparsify", w.tiny, tmp / "out", "--method", "magnitude", "--ratio", "-0.1"], tmp / "out", ("--ratio",)


@case("sparsify-seq-len-zero")
def _(tmp, w):
    return (["sparsify", w.tiny, tmp / "out", "--dataset", w.calibration, "--seq-len", "0"], tmp / "out",
            ("--seq-len",))


@case("sparsify-num-samples-zero")
def _(tmp, w):
    return (["sparsify", w.tiny, tmp / "out", "--dataset", w.calibration, "--num-samples", "0"], tmp / "out",
            ("--num-samples",))


@case("finetune-rank-zero")
def _(tmp, w):
    return ["finetune", w.sparse, w.data, tmp / "out", "--rank", "0"], tmp / "out", ("--rank",)


@case("finetune-rank-too-large")
def _(tmp, w):
    return ["finetune", w.sparse, w.data, tmp / "out", "--rank", "4096"], tmp / "out", ("--rank", "4096")


@case("finetune-rank-space-zero")
def _(tmp, w):
    return ["finetune", w.sparse, w.data, tmp / "out", "--nls", "--rank-space", "8,0"], tmp / "out", ("--rank-space",)


@case("finetune-group-size-not-dividing")
def _(tmp, w):
    return (["finetune", w.sparse, w.data, tmp / "out", "--method", "qa-sparsepeft", "--group-size", "96"],
            tmp / "out", ("--group-size",))


@case("sparsify-n-not-below-m")
def _(tmp, w):
    return ["sparsify", w.tiny, tmp / "out", "--method", "magnitude", "--pattern", "4:4"], tmp / "out", ("N must be",)


@case("export-group-size-not-dividing")
def _(tmp, w):
    return (["export", w.sparse, tmp / "out", "--weight-format", "int4", "--group-size", "96"], tmp / "out",
            ("--group-size 96 does not divide", "--group-size-fallback"))


@case("export-device-unknown")
def _(tmp, w):
    return ["export", w.sparse, tmp / "out", "--device", "TPU"], tmp / "out", ("not available here", "CPU")


@case("export-group-size-zero")
def _(tmp, w):
    return ["export", w.sparse, tmp / "out", "--group-size", "0"], tmp / "out", ("--group-size",)


@case("finetune-lr-negative")
def _(tmp, w):
    return ["finetune", w.sparse, w.data, tmp / "out", "--lr", "-1"], tmp / "out", ("--lr",)


@case("finetune-eval-split-one")
def _(tmp, w):
    return ["finetune", w.sparse, w.data, tmp / "out", "--eval-split", "1"], tmp / "out", ("--eval-split",)


@case("quickstart-seeds-zero")
def _(tmp, w):
    return ["quickstart", "--out", tmp / "out", "--seeds", "0"], tmp / "out", ("--seeds",)


# --- outputs ---------------------------------------------------------------------------------------------------

@case("sparsify-output-is-input")
def _(tmp, w):
    m = copy(w.tiny, tmp / "m")
    return ["sparsify", m, m, "--method", "magnitude", "--overwrite"], tmp / "none", ("input",)


@case("export-output-inside-input")
def _(tmp, w):
    m = copy(w.sparse, tmp / "m")
    return ["export", m, m / "ir"], m / "ir", ("inside",)


@case("merge-output-is-adapter")
def _(tmp, w):
    a = copy(w.adapter, tmp / "a")
    return ["merge", a, a, "--overwrite"], tmp / "none", ("input",)


@case("finetune-output-is-base")
def _(tmp, w):
    m = copy(w.sparse, tmp / "m")
    return ["finetune", m, w.data, m, "--overwrite", "--max-steps", "1"], tmp / "none", ("input",)


@case("sparsify-read-only-parent")
def _(tmp, w):
    parent = mounted(tmp / "ro", "ro,size=64k")
    return ["sparsify", w.tiny, parent / "out", "--method", "magnitude"], parent / "out", ("cannot write", "ro")


@case("sparsify-disk-full")
def _(tmp, w):
    parent = mounted(tmp / "full", "size=64k")
    return ["sparsify", w.tiny, parent / "out", "--method", "magnitude"], parent / "out", ("No space left",)


@case("export-disk-full")
def _(tmp, w):
    parent = mounted(tmp / "full", "size=256k")
    return ["export", w.sparse, parent / "out", "--weight-format", "fp16"], parent / "out", ("No space left",)


MOUNTS: list[Path] = []


def mounted(folder: Path, options: str) -> Path:
    """A tiny tmpfs at `folder` (read-only or small), the real thing where we may mount (root, Linux).

    Elsewhere the folder is made read-only, or writes are made to fail with ENOSPC by `simulate_full_disk`.
    """
    import subprocess

    folder.mkdir()
    ok = sys.platform == "linux" and subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                                                    capture_output=True).returncode == 0
    if ok:
        MOUNTS.append(folder)
    elif options.startswith("ro"):
        folder.chmod(0o555)
    else:
        SIMULATED.append(folder)
    return folder


SIMULATED: list[Path] = []


def simulate_full_disk(monkeypatch) -> None:
    """Where no tmpfs can be mounted: every file write under a `SIMULATED` folder fails with ENOSPC."""
    import builtins
    import io

    real_open = builtins.open

    def full_open(file, mode="r", *args, **kwargs):
        if any(m in mode for m in "wax") and any(str(file).startswith(str(f)) for f in SIMULATED):
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_open)
    monkeypatch.setattr(io, "open", full_open)


@pytest.fixture(autouse=True)
def unmount():
    yield
    import subprocess

    while MOUNTS:
        subprocess.run(["umount", str(MOUNTS.pop())], capture_output=True)
    SIMULATED.clear()


@case("fetch-unknown-model")
def _(tmp, w):
    return ["fetch", "gpt-5", "--cache", tmp / "cache"], tmp / "cache", ("gpt-5", "smollm2")


@case("run-recipe-missing")
def _(tmp, w):
    return ["run", tmp / "nope.py", "--model", w.sparse], tmp / "none", ("nope.py",)


@case("tiny-model-unknown-arch")
def _(tmp, w):
    return ["tiny-model", tmp / "out", "--arch", "gpt2"], tmp / "out", ("gpt2", "llama")


def tree_digest(*roots: Path) -> dict[str, str]:
    """Path -> content hash (or mode, for folders) of every file under `roots`."""
    out = {}
    for root in roots:
        for p in sorted([root, *root.rglob("*")] if root.is_dir() else [root]):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.is_dir():
                out[str(p)] = "dir"
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input(name, tmp_path, world, capsys, monkeypatch):
    argv, output, fragments = CASES[name](tmp_path, world)
    if SIMULATED:
        simulate_full_disk(monkeypatch)
    inputs = (tmp_path, world.tiny.parent, world.data.parent)
    before = tree_digest(*inputs)
    code, err = run_cli(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    if os.environ.get("SQFT_OV_SHOW_ERRORS"):  # to read the corpus's messages: SQFT_OV_SHOW_ERRORS=1 pytest -s
        with capsys.disabled():
            print(f"\n{name}: {err.strip()}")
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), f"exit {code}:\n{err}"
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not output.exists(), f"{output} was written"
    assert tree_digest(*inputs) == before, "an input changed"
    leftovers = [p for root in inputs for p in root.rglob(".*") if ".tmp-" in p.name or p.name.endswith(".run")]
    assert not leftovers, leftovers


def test_the_corpus_covers_every_command():
    from sqft_ov.cli import app

    commands = {c.name or c.callback.__name__ for c in app.registered_commands} - {"demo"}  # demo: quickstart
    assert len(CASES) >= 40, len(CASES)
    assert {name.split("-")[0] for name in CASES} >= {c.split("-")[0] for c in commands}, commands
