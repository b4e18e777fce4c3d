"""Shared, session-scoped artefacts: tiny models, calibration text, sparse models and their IRs.

Everything is built here from nothing (no download); the expensive steps (export) run once per session.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

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
    from sqft_ov.tiny import sample_corpus

    path = workdir / "calibration.txt"
    path.write_text("\n".join(sample_corpus(400, seed=7)) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_models(workdir) -> dict[str, Path]:
    from sqft_ov.tiny import TinyModelConfig, build_tiny_model

    return {arch: build_tiny_model(workdir / f"tiny-{arch}", TinyModelConfig(arch=arch)) for arch in ARCHS}


@pytest.fixture(scope="session")
def sparse_models(workdir, tiny_models, calibration_txt) -> dict[str, Path]:
    """Wanda 50 % unstructured copy of each tiny model."""
    from sqft_ov.sparsify import SparsityConfig, sparsify_folder

    out = {}
    for arch, path in tiny_models.items():
        out[arch] = workdir / f"sparse-{arch}"
        sparsify_folder(path, out[arch], SparsityConfig("wanda", 0.5), calibration_txt, num_samples=16, seq_len=64)
    return out


@pytest.fixture(scope="session")
def exported(workdir, sparse_models):
    """Lazily exported IRs keyed by (arch, weight format); each is built once per session."""
    from sqft_ov.export import ExportConfig, export

    cache: dict[tuple[str, str], Path] = {}

    def get(arch: str, fmt: str) -> Path:
        if (arch, fmt) not in cache:
            cache[arch, fmt] = workdir / f"ir-{arch}-{fmt}"
            export(sparse_models[arch], cache[arch, fmt], ExportConfig(weight_format=fmt, group_size=64))
        return cache[arch, fmt]

    return get
