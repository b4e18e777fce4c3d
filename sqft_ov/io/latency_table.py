"""A decode latency table: ms per decoded token of the sub-networks of one elastic-width space, measured once on
one machine with OpenVINO (`sqft_ov.measure.latency`, `sqft-ov latency`), read by `search --max-latency`.

**What is measured.** Every (MLP width, KV groups) pair that some block of the space can take, as a *uniform*
sub-network: every block cut to that pair, exported to an IR and timed (median ms per decoded token).

**How a sub-network is predicted** (`LatencyTable.predict`). The blocks of one model have one shape, so a
block's share of a decode step depends on its own widths only. With T(m, k) the measured time of the uniform
sub-network at (m, k), R the reference pair (the largest MLP width and KV groups measured) and L blocks, a
sub-network whose block i has widths (m_i, k_i) is predicted at

    T(R) + sum_i (T(m_i, k_i) - T(R)) / L

that is, each block moves the time by its 1/L share of what the uniform change to its widths measured. This is
exact on every measured point (all blocks at (m, k) give T(m, k)) and additive between them; what it leaves out
is any interaction between blocks (none in a decoder, whose blocks run one after the other) and noise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqft_ov.errors import ConfigError

if TYPE_CHECKING:
    from sqft_ov.io.blocks import BlockWidth

FORMAT = "sqft-ov latency table"
VERSION = 1
SHAPE_KEYS = ("layers", "hidden", "intermediate", "heads", "kv_heads", "head_dim")
REMEASURE = "measure it with `sqft-ov latency ADAPTER TABLE`"


def normalized_space(space: dict) -> list[dict]:
    """A width space's blocks with their choices as sorted, distinct whole numbers (largest first)."""
    return [{"mlp": sorted({int(v) for v in b["mlp"]}, reverse=True),
             "kv_groups": sorted({int(v) for v in b["kv_groups"]}, reverse=True)} for b in space["blocks"]]


def measured_pairs(space: dict) -> list[tuple[int, int]]:
    """The (MLP width, KV groups) pairs a table for `space` measures: every MLP width any block takes with every
    KV-group count any block takes, largest first."""
    blocks = normalized_space(space)
    mlp = sorted({m for b in blocks for m in b["mlp"]}, reverse=True)
    kv = sorted({k for b in blocks for k in b["kv_groups"]}, reverse=True)
    return [(m, k) for m in mlp for k in kv]


def _describe(blocks: list[dict]) -> str:
    if all(b == blocks[0] for b in blocks):
        return f"MLP widths {blocks[0]['mlp']}, KV groups {blocks[0]['kv_groups']} in each of {len(blocks)} blocks"
    return "; ".join(f"block {i}: MLP {b['mlp']}, KV {b['kv_groups']}" for i, b in enumerate(blocks))


@dataclass
class LatencyTable:
    """A table read and checked (`read_latency_table`); `record` is the whole file as written."""

    where: str
    shape: dict[str, int]
    blocks: list[dict]  # the width space, normalized
    points: dict[tuple[int, int], float]  # (mlp, kv_groups) -> measured ms per decoded token
    machine: dict
    record: dict

    @property
    def reference(self) -> tuple[int, int]:
        return max(m for m, _ in self.points), max(k for _, k in self.points)

    def predict(self, widths: list[BlockWidth]) -> float:
        """Predicted ms per decoded token of the sub-network with these per-block widths (see the module's doc)."""
        if len(widths) != self.shape["layers"]:
            raise ConfigError(f"{len(widths)} block widths for a latency table of {self.shape['layers']} blocks")
        base = self.points[self.reference]
        try:
            return base + sum(self.points[w.mlp, w.kv_groups] - base for w in widths) / len(widths)
        except KeyError as exc:
            raise ConfigError(f"latency table {self.where} has no measurement for MLP width {exc.args[0][0]} with "
                              f"{exc.args[0][1]} KV groups: {REMEASURE}") from None

    def check_matches(self, space: dict, shape: dict, adapter: str) -> None:
        """Refuse a table measured on another model shape or for another width space than `adapter`'s."""
        if {k: self.shape[k] for k in SHAPE_KEYS} != {k: int(shape[k]) for k in SHAPE_KEYS}:
            raise ConfigError(f"latency table {self.where} was measured on another model shape ({self.shape}) than "
                              f"{adapter}'s base ({shape}): {REMEASURE.replace('ADAPTER', str(adapter))}")
        ours = normalized_space(space)
        if ours != self.blocks:
            raise ConfigError(f"latency table {self.where} was measured for other widths ({_describe(self.blocks)}) "
                              f"than {adapter} was trained with ({_describe(ours)}): "
                              f"{REMEASURE.replace('ADAPTER', str(adapter))}")

    def machine_warning(self, cpu: str) -> str | None:
        """A line to show when the table was measured on another CPU than `cpu` (None when it was not)."""
        measured = self.machine.get("cpu")
        if measured == cpu:
            return None
        return (f"latency table {self.where} was measured on {measured!r}, this machine is {cpu!r}: its ms per token "
                f"may not hold here ({REMEASURE} on the machine you deploy to)")


def _malformed(where: str, what: str) -> ConfigError:
    return ConfigError(f"latency table {where} is malformed ({what}): {REMEASURE}")


def _points(data: dict, where: str) -> dict[tuple[int, int], float]:
    points = {}
    for p in data["points"]:
        ms = float(p["ms_per_token"])
        if not (math.isfinite(ms) and ms > 0):
            raise _malformed(where, f"ms_per_token {ms} is not a positive number")
        points[int(p["mlp"]), int(p["kv_groups"])] = ms
    return points


def parse_table(data, where: str) -> LatencyTable:
    """Check a table's JSON (as `sqft-ov latency` writes it) and return it; ConfigError names what is wrong."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{where} is not a latency table (no \"format\": \"{FORMAT}\"): {REMEASURE}")
    if data.get("version") != VERSION:
        raise _malformed(where, f"version {data.get('version')!r}, this sqft-ov reads version {VERSION}")
    try:
        shape = {k: int(data["shape"][k]) for k in SHAPE_KEYS}
        blocks = normalized_space(data["space"])
        points = _points(data, where)
        machine = dict(data["machine"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _malformed(where, f"{type(exc).__name__}: {exc}") from None
    if len(blocks) != shape["layers"] or any(not b["mlp"] or not b["kv_groups"] for b in blocks):
        raise _malformed(where, f"its space has {len(blocks)} blocks, some without choices, for {shape['layers']} "
                                "blocks")
    missing = [pair for pair in measured_pairs(data["space"]) if pair not in points]
    if missing:
        raise _malformed(where, f"no measurement for MLP width {missing[0][0]} with {missing[0][1]} KV groups")
    return LatencyTable(where, shape, blocks, points, machine, data)


def read_latency_table(path: str | Path) -> LatencyTable:
    """The table in a file written by `sqft-ov latency`; a missing, unreadable or malformed file is a ConfigError."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"latency table {path} does not exist: {REMEASURE}") from None
    except IsADirectoryError:
        raise ConfigError(f"latency table {path} is a folder: give the JSON file `sqft-ov latency` wrote") from None
    except OSError as exc:
        raise ConfigError(f"latency table {path} cannot be read ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"latency table {path} is not valid JSON ({exc}): {REMEASURE}") from None
    return parse_table(data, str(path))
