"""Atomic output folders: a killed run never leaves a half-written OUTPUT behind.

Every command builds its result in a hidden temporary folder next to OUTPUT (same file system, so the
final `rename` is atomic) and only moves it into place once everything has been written.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sqft_ov.errors import SqftError


def check_output(output: str | Path, overwrite: bool) -> Path:
    """Refuse an existing OUTPUT unless `overwrite`; called before any expensive work starts."""
    output = Path(output).expanduser().absolute()
    if output.exists() and not overwrite:
        raise SqftError(f"output {output} already exists: pass --overwrite to replace it, or choose another path")
    if output.exists() and not output.is_dir():
        raise SqftError(f"output {output} exists and is not a folder: remove it or choose another path")
    return output


@contextlib.contextmanager
def atomic_output(output: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces OUTPUT, on any error it is deleted."""
    output = check_output(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is meant to be shared
    try:
        yield tmp
        if output.exists():
            # Move the old folder aside first so that OUTPUT is never missing *and* never half-old.
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
            old.rmdir()
            output.rename(old)
            tmp.rename(output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(output)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_output_file(output: str | Path, overwrite: bool) -> Path:
    """Like check_output, for a single report file."""
    output = Path(output).expanduser().absolute()
    if output.exists() and not overwrite:
        raise SqftError(f"output {output} already exists: pass --overwrite to replace it, or choose another path")
    if output.is_dir():
        raise SqftError(f"output {output} is a folder: give a file name")
    return output


def write_file_atomic(output: str | Path, data: str | bytes, overwrite: bool = False) -> Path:
    """Write a file through a temporary sibling and a rename: readers never see half a file."""
    output = check_output_file(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.tmp-", dir=output.parent)
    try:
        with open(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        Path(tmp).chmod(0o644)
        Path(tmp).replace(output)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return output
