"""lm-eval's `custom_dataset` for sqft-ov data: a local prompt/response file, read as sqft-ov reads it.

lm-eval resolves a YAML's `data_files` from the working directory, so a task could not carry its data; this
loader finds the bundled problems beside itself, or the file `--metadata '{"data": "PATH"}'` names.
Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

BUNDLED = Path(__file__).with_name("arithmetic.jsonl")  # 20 quickstart problems (downstream, seed 7)


def load(data: str | None = None, **_) -> dict:
    """{"test": rows}; lm-eval passes the task's and the command's metadata as keywords."""
    from sqft_ov.io.data import load_table

    return {"test": load_table(Path(data).expanduser() if data else BUNDLED)}
