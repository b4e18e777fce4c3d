"""What the benchmark scripts share: running one command in its own process and measuring it."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time


def measure(cmd: list[str]) -> dict:
    """Wall seconds and peak RSS (MiB) of one command's process tree.

    The caller must stay small: on Linux a child's ru_maxrss starts from its parent's RSS at fork.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.read()[-3000:]}")
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024}


def cpu_slug(cpu: str) -> str:
    """A CPU model name as a results-file suffix: 'Intel(R) Xeon(R) Processor' -> 'intel-xeon-processor'."""
    return re.sub(r"[^a-z0-9]+", "-", re.sub(r"\((r|tm)\)", "", cpu.lower())).strip("-")


def cli(*args) -> list[str]:
    """`sqft-ov ARGS` with this interpreter."""
    return [sys.executable, "-m", "sqft_ov.cli", *map(str, args)]


def apples_sft_rows(n: int = 256, seed: int = 0) -> list[dict]:
    """Prompt/response rows of a generated arithmetic task: the fine-tuning data of the benchmarks."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        rows.append({"prompt": f"Ana has {a} apples and buys {b} more. How many apples does she have now?",
                     "response": f"She has {a} + {b} = {a + b} apples. #### {a + b}"})
    return rows
