"""Stage 4: merge trained adapters into the weights at target precision.

* sparsepeft: W + M * (B A) * alpha / r in float: exactly as sparse as the base.
* qa-sparsepeft: fake_quant(W + M * B A) with the trained quantizer: the weights land on the trained INT4
  grid (and stay sparse). The grid itself (the quantizers' ranges / scales, group size, sym/asym) is saved
  beside them in `sqft_int4_grid.safetensors` + `.json`, so `sqft-ov export MERGED --weight-format int4`
  writes exactly these INT4 values instead of re-quantizing.
* lora: W + (B A) * alpha / r: the update fills the base's zeros; a warning says how much sparsity is lost.

With elastic widths (LoNAS / EFTNAS) the chosen sub-network is then cut out: smaller weight matrices, each
block at its own widths (recorded in config.json as `sqft_layer_widths`; sqft-ov's loader and export read them).

`merge_report.json` records the base zeros kept (counted before the cut), the final precision and the
largest logit difference between the trained (unmerged) model at the chosen configuration and the merged one
on sample inputs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPORT = "merge_report.json"


@dataclass
class MergeReport:
    method: str
    output: str
    precision: str
    ranks: list[int] | None
    base_zeros: int
    base_zeros_kept: int
    max_logit_diff: float
    widths: list[dict] | None = None  # per block, when a sub-network was cut out of elastic widths
    decoder_share: float | None = None  # its decoder linear weights / the full model's

    @property
    def zeros_kept_share(self) -> float:
        return self.base_zeros_kept / self.base_zeros if self.base_zeros else 1.0


def _sample_batch(tokenizer, record: dict, n: int = 4) -> dict:
    from sqft_ov.io.sft_data import SFTFormat, load_pairs, render_prompt

    pairs = load_pairs(record["data"], SFTFormat(**record["data_format"]))[:n]
    texts = [render_prompt(tokenizer, p, False) + " " + r for p, r in pairs]  # chat rows: their template
    return tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=128)


def merge(adapter_dir: str | Path, output: str | Path, sub_adapter: str | Path | None = None,
          overwrite: bool = False, base: str | Path | None = None) -> MergeReport:
    from sqft_ov.adapters.adapted import apply_sub_adapter, load_adapted
    from sqft_ov.io.checkpoint import check_model_dir, checkpoint_dtype
    from sqft_ov.io.grid import write_grid
    from sqft_ov.io.output import atomic_output, check_output, kill_point

    output = check_output(output, overwrite, inputs=(adapter_dir, base, sub_adapter))
    base = check_model_dir(base) if base is not None else None  # --base as a Hub ID or .gguf: its local folder
    adapted, tokenizer, record = load_adapted(adapter_dir, base)
    method = record["method"]
    ranks = apply_sub_adapter(adapted, record, sub_adapter)

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = _sample_batch(tokenizer, record)
    with torch.no_grad():
        reference = adapted.model(**batch).logits

    # Merge in place into the model already in memory (no second copy of the base): the adapters' base
    # weights become the merged weights, then the adapter machinery is taken off.
    base_dir = Path(record["base"] if base is None else base)
    with torch.no_grad():
        # the method's merge: the plain model, the merged weights' names, the trained INT4 grids (None: float)
        model, names, grids = adapted.method.merge(adapted)
        model.eval()
        base_zeros, kept = _zeros_kept(base_dir, model, names)
        widths = share = None
        if adapted.widths is not None:  # LoNAS / EFTNAS: physically cut the chosen sub-network out
            from sqft_ov.io.blocks import Shape, decoder_share, shrink

            active = adapted.widths.active
            adapted.widths.remove()
            share = decoder_share(active, Shape.of(model.config))
            shrink(model, active)
            widths = [asdict(w) for w in active]
        logits = model(**batch).logits
    mask = batch["attention_mask"].bool()
    diff = float((logits - reference).abs()[mask].max())
    precision = "int4 (trained grid)" if grids is not None else "float"
    report = MergeReport(method, str(output), precision, ranks, base_zeros, kept, diff, widths, share)
    kill_point("merge-merged")

    with atomic_output(output, overwrite) as tmp:
        if grids is None:  # float merges keep the base checkpoint's dtype; INT4 grid values need float32
            model.to(checkpoint_dtype(base_dir))
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if grids is not None:
            write_grid(tmp, grids, record["quantization"])
        (tmp / REPORT).write_text(json.dumps({**asdict(report), "zeros_kept_share": report.zeros_kept_share,
                                              "adapter": str(Path(adapter_dir).absolute())}, indent=2))
    return report


def _zeros_kept(base_dir: Path, model, names: list[str]) -> tuple[int, int]:
    """Zeros of the base checkpoint's weights, and how many of them are zero in the merged model."""
    from sqft_ov.io.checkpoint import read_tensor, safetensors_index

    index = safetensors_index(base_dir)
    params = dict(model.named_parameters())
    zeros = kept = 0
    for name in names:
        zero = read_tensor(index, name) == 0
        zeros += int(torch.count_nonzero(zero))
        kept += int(torch.count_nonzero(zero & (params[name] == 0)))
    return zeros, kept
