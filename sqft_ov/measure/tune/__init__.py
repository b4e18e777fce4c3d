"""Tuning deployed IRs: runtime properties (search), their effect on outputs (probe), where a decode step's
time goes (profile), and export-time choices (export_grid)."""

from sqft_ov.measure.tune.profile import profile_decode_step
from sqft_ov.measure.tune.results import ExportGridResult, TuneResult
from sqft_ov.measure.tune.search import TuneConfig, apply, tune

__all__ = ["ExportGridResult", "TuneConfig", "TuneResult", "apply", "profile_decode_step", "tune"]
