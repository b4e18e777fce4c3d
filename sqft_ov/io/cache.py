"""Where sqft-ov keeps what it builds or fetches once: the foundation model, example models, GGUF conversions."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_dir() -> Path:
    """$SQFT_OV_CACHE, else $XDG_CACHE_HOME/sqft-ov, else ~/.cache/sqft-ov."""
    if os.environ.get("SQFT_OV_CACHE"):
        return Path(os.environ["SQFT_OV_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "sqft-ov"


def file_sha256(path: Path) -> str:
    """Identifies a downloaded or converted file: cache keys and integrity checks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()
