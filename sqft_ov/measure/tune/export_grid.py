"""Export-time choices that change decode speed: INT4 group size, sym or asym, INT8 or INT4 embeddings/lm_head.

For QA-SparsePEFT the INT4 grid is fixed when fine-tuning starts, so this table is what tells a user
which group size and mode to train with. The model is converted once to an FP16 IR (also the accuracy
reference); every grid point compresses that IR with NNCF, and all points run interleaved through
`bench` against the export default (group 128, asym, INT8 embeddings), batch by batch.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sqft_ov.errors import ConfigError, ModelFolderError, SqftError
from sqft_ov.measure.tune.results import ExportGridResult
from sqft_ov.measure.tune.search import TuneConfig, in_batches, probe_prompt, ratio_summary

GROUPS = (-1, 32, 64, 128)
MODES = ("sym", "asym")
EMBEDDINGS = ("int8", "int4")
DEFAULT_POINT = (128, "asym", "int8")  # what `sqft-ov export --weight-format int4` writes
REPORT = "export_grid.json"


@dataclass(frozen=True)
class GridPoint:
    group_size: int
    mode: str
    embeddings: str

    @property
    def name(self) -> str:
        group = "channel" if self.group_size == -1 else f"g{self.group_size}"
        return f"int4-{group}-{self.mode}-emb-{self.embeddings}"


def grid_points(groups=GROUPS, modes=MODES, embeddings=EMBEDDINGS) -> list[GridPoint]:
    for g in groups:
        if g == 0 or g < -1:
            raise ConfigError(f"group size {g} is not valid: positive, or -1 for per channel")
    for m in modes:
        if m not in MODES:
            raise ConfigError(f"mode {m!r} is not valid: choose {', '.join(MODES)}")
    for e in embeddings:
        if e not in EMBEDDINGS:
            raise ConfigError(f"embeddings {e!r} is not valid: choose {', '.join(EMBEDDINGS)}")
    return [GridPoint(g, m, e) for g in groups for m in modes for e in embeddings]


def _compress_point(fp16: Path, out: Path, point: GridPoint, provenance: dict) -> dict:
    from sqft_ov.io.ir_fusion import fuse_ir
    from sqft_ov.stages.export import ExportConfig, compress_ir

    out.mkdir()
    for file in fp16.iterdir():  # tokenizer IRs, configs: everything but the model itself
        if file.is_file() and not file.name.startswith("openvino_model."):
            shutil.copy2(file, out / file.name)
    config = ExportConfig(weight_format="int4", sym=point.mode == "sym", group_size=point.group_size,
                          all_layers=point.embeddings == "int4")
    settings = compress_ir(fp16 / "openvino_model.xml", config, provenance, into=out / "openvino_model.xml")
    return settings | {"fused_projections": fuse_ir(out / "openvino_model.xml") or "none"}  # as export writes it


def _build_points(model_dir: Path, tmp: Path, points: list, on_progress=None) -> tuple:
    """The FP16 IR (the accuracy reference, and what each point compresses) and one IR per grid point."""
    from sqft_ov.stages.export import ExportConfig, export

    rows: list[dict] = []
    report = on_progress or (lambda done, total, label: None)
    report(0, len(points) + 1, "export grid")
    # unfused, so that NNCF compresses each point's projections as export does, fused after
    reference = export(model_dir, tmp / "fp16", ExportConfig(weight_format="fp16", fuse_projections=False))
    provenance = {"source": str(model_dir), "export_grid": True}
    for number, point in enumerate(points, 1):
        report(number, len(points) + 1, "export grid")
        row = {"name": point.name, **asdict(point), "error": None}
        try:
            row["settings"] = _compress_point(tmp / "fp16", tmp / point.name, point, provenance)
        except SqftError as exc:
            shutil.rmtree(tmp / point.name, ignore_errors=True)
            row["error"] = str(exc).split(":")[0] + " (this model's layer sizes)"
        rows.append(row)
    report(len(points) + 1, len(points) + 1, "export grid")
    return reference, rows


def export_grid(model_dir: str | Path, output: str | Path, config: TuneConfig | None = None, points=None,
                overwrite: bool = False, on_progress=None) -> ExportGridResult:
    """Export every grid point of MODEL into OUTPUT/<point> and time them all; the report is OUTPUT/export_grid.json.

    `on_progress(done, total, label)` follows the exports (`export grid`) and each bench run."""
    from sqft_ov.io.checkpoint import check_model_dir
    from sqft_ov.io.grid import Int4Grid
    from sqft_ov.io.ir import IR_FILE
    from sqft_ov.io.output import atomic_output, check_output
    from sqft_ov.measure.bench.runner import BenchConfig, BenchModel, bench
    from sqft_ov.measure.tune.probe import probe_setting, reference_probe

    config = config or TuneConfig()
    points = points or grid_points()
    model_dir = check_model_dir(model_dir)
    if (model_dir / IR_FILE).is_file():
        raise ModelFolderError(f"{model_dir} is an IR: --export-grid re-exports a Hugging Face model folder "
                               "(tune an IR's runtime properties without --export-grid)")
    if Int4Grid.read(model_dir) is not None:
        raise ConfigError(f"{model_dir} was merged onto a trained INT4 grid (QA-SparsePEFT): its group size and mode "
                          "are fixed, so there is no export grid to try; run the grid on the base model before "
                          "fine-tuning, or tune the exported IR's runtime properties")
    check_output(output, overwrite, inputs=(model_dir,))
    start = time.monotonic()
    with atomic_output(output, overwrite) as tmp:
        reference, rows = _build_points(model_dir, tmp, points, on_progress)
        probe = reference_probe(tmp / "fp16" / IR_FILE, probe_prompt(tmp / "fp16", config.prompt_tokens),
                                config.probe_tokens, config.device)
        built = [r for r in rows if r["error"] is None]
        for row in built:
            result = probe_setting(tmp / row["name"] / IR_FILE, probe, {}, config.device)
            row.update({k: v for k, v in result.items() if k != "applied"})
        default_name = GridPoint(*DEFAULT_POINT).name
        baseline = next((r for r in built if r["name"] == default_name), built[0] if built else None)
        if baseline is None:
            raise SqftError("no grid point could be exported: " + "; ".join(f"{r['name']}: {r['error']}" for r in rows))
        others = [r for r in built if r is not baseline]
        bench_config = BenchConfig(device=config.device, prompt_tokens=config.prompt_tokens,
                                   new_tokens=config.new_tokens, repeats=config.repeats, warmup=config.warmup,
                                   bandwidth_gib=0)

        def measure(batch: list[dict], number: int) -> None:
            group = [baseline] + batch
            report = bench([BenchModel(tmp / r["name"], label=r["name"]) for r in group], bench_config, on_progress)
            for row, entry in zip(group, report.models):
                if row is baseline and number > 1:  # measured again as each batch's baseline; its row is batch 1's
                    continue
                row["batch"] = number
                if not entry["ok"]:
                    row["error"] = entry["error"]
                    continue
                row["size_bytes"] = entry["size_bytes"]
                row["weight_bytes_per_token"] = entry["weight_bytes_per_token"]
                row["peak_rss_mib"] = entry["peak_rss_mib"]
                row["decode_tokens_per_s"] = entry["stats"]["decode_tokens_per_s"]["median"]
                row["prefill_tokens_per_s"] = entry["stats"]["prefill_tokens_per_s"]["median"]
                row["decode_ratio"] = ratio_summary(entry, "decode_tokens_per_s")
                row["prefill_ratio"] = ratio_summary(entry, "prefill_tokens_per_s")

        if others:
            in_batches(others, config.batch_size, start + config.budget_minutes * 60, measure)
        else:
            measure([], 1)
        rows.sort(key=lambda r: (r["error"] is not None, -(r.get("decode_ratio") or {}).get("median", 0.0)))
        result = ExportGridResult(model=str(model_dir), output=str(Path(output).expanduser().absolute()),
                                  baseline=baseline["name"], reference="fp16 IR, f32 inference precision",
                                  reference_export_seconds=reference.seconds, config=asdict(config), rows=rows,
                                  seconds=time.monotonic() - start)
        (tmp / REPORT).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result
