"""What `tune` and `export_grid` return: typed results whose `to_dict()` is the JSON report they stand for."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class TuneResult:
    """A runtime-property search of one IR (`sqft-ov tune --json`).

    `rows` has one dict per setting tried (speed ratios to the current configuration, logit difference to the
    f32 reference, flags); `best` is the chosen setting (`{}` when the current configuration stays).
    """

    ir: str
    config: dict
    machine: dict
    versions: dict[str, str]
    current: dict  # the folder's runtime configuration, what it applied, its logit difference and speed
    reference: dict  # the f32 reference's properties and tokens
    tolerance: float  # max |logit| difference a setting may have
    rows: list[dict]
    confirmation: dict | None  # the winners re-measured with twice the repeats, if the budget allowed
    best: dict
    profile: dict | None  # per-node profile of a decode step, current and best (None: --no-profile)
    seconds: float
    applied: dict | None = None  # what `apply` wrote into the folder (the CLI's --apply), else absent

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if out["applied"] is None:
            del out["applied"]
        return out


@dataclass
class ExportGridResult:
    """Every INT4 export point of one model, timed against the export default (OUTPUT/export_grid.json)."""

    model: str
    output: str
    baseline: str  # name of the point every ratio refers to
    reference: str  # what the logits are compared with
    reference_export_seconds: float
    config: dict
    rows: list[dict]
    seconds: float

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}
