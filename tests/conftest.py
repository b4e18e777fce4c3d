"""Shared, session-scoped artefacts: tiny models, calibration text, sparse models and their IRs.

Everything is built here from nothing (no download); the expensive steps (export) run once per session.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
from pathlib import Path

import pytest

from sqft_ov.io.sft_data import SFTFormat

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)

ARCHS = ("llama", "qwen2")  # qwen2 carries q/k/v biases


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sqft")


@pytest.fixture(scope="session")
def calibration_txt(workdir) -> Path:
    from sqft_ov.quickstart.tiny import sample_corpus

    path = workdir / "calibration.txt"
    path.write_text("\n".join(sample_corpus(400, seed=7)) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_models(workdir) -> dict[str, Path]:
    from sqft_ov.quickstart.tiny import TinyModelConfig, build_tiny_model

    return {arch: build_tiny_model(workdir / f"tiny-{arch}", TinyModelConfig(arch=arch)) for arch in ARCHS}


@pytest.fixture(scope="session")
def sparse_models(workdir, tiny_models, calibration_txt) -> dict[str, Path]:
    """Wanda 50 % unstructured copy of each tiny model."""
    from sqft_ov.stages.sparsify import SparsityConfig, sparsify_folder

    out = {}
    for arch, path in tiny_models.items():
        out[arch] = workdir / f"sparse-{arch}"
        sparsify_folder(path, out[arch], SparsityConfig("wanda", 0.5), calibration_txt, num_samples=16, seq_len=64)
    return out


@pytest.fixture(scope="session")
def exported(workdir, sparse_models):
    """Lazily exported IRs keyed by (arch, weight format); each is built once per session."""
    from sqft_ov.stages.export import ExportConfig, export

    cache: dict[tuple[str, str], Path] = {}

    def get(arch: str, fmt: str) -> Path:
        if (arch, fmt) not in cache:
            cache[arch, fmt] = workdir / f"ir-{arch}-{fmt}"
            export(sparse_models[arch], cache[arch, fmt], ExportConfig(weight_format=fmt, group_size=64))
        return cache[arch, fmt]

    return get


STEPS = 12


def train(sparse, data, out, **kwargs):
    """finetune with the tests' defaults: a few steps, a high learning rate, no checkpoints."""
    from sqft_ov.stages.finetune import FinetuneConfig, finetune

    defaults = dict(max_steps=STEPS, lr=5e-3, batch_size=4, save_steps=100, eval_split=0.2, seed=3)
    cfg = FinetuneConfig(**{**defaults, **kwargs})
    return finetune(sparse, data, out, cfg)


@pytest.fixture(scope="session")
def sft_data(workdir) -> Path:
    rng = random.Random(0)
    rows = []
    for _ in range(64):
        a, b = rng.randint(1, 40), rng.randint(1, 40)
        rows.append({"question": f"Mia has {a} pens and buys {b} more. How many pens?",
                     "answer": f"{a} + {b} = {a + b}. #### {a + b}"})
    path = workdir / "sft.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


FIELDS = dict(data_format=SFTFormat(prompt_field="question", response_field="answer", max_length=64))


@pytest.fixture(scope="session")
def trained(workdir, sparse_models, sft_data):
    """One trained adapter per (method, nls), built lazily and shared."""
    cache = {}

    def get(method: str, nls: bool = False) -> Path:
        key = (method, nls)
        if key not in cache:
            out = workdir / f"adapter-{method}-{'nls' if nls else 'fixed'}"
            extra = dict(nls=True, rank_space=(16, 12, 8)) if nls else dict(rank=8)
            train(sparse_models["llama"], sft_data, out, method=method, **extra, **FIELDS)
            cache[key] = out
        return cache[key]

    return get


def run_cli(argv: list, capsys) -> tuple[int, str]:
    """`sqft-ov ARGV` in this process; the libraries quieted as the script quiets them before importing them."""
    import datasets
    import transformers

    from sqft_ov.cli import main

    datasets.disable_progress_bars()  # the script sets their environment variables before the first import
    transformers.utils.logging.disable_progress_bar()

    old = sys.argv
    sys.argv = ["sqft-ov", *map(str, argv)]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old
    return code, capsys.readouterr().err
