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
    output: str | None  # the merged folder (None: merged in memory by merge_model)
    precision: str
    ranks: list[int] | None
    base_zeros: int
    base_zeros_kept: int
    max_logit_diff: float | None  # None: no sample inputs were given to merge_model
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


@torch.no_grad()
def merge_model(adapted, sub_adapter=None, sample: dict | None = None):
    """Merge an `Adapted` model in memory at target precision: (the plain merged model, MergeReport).

    The merge happens in place, in float32 (no second copy of the base; a bf16-trained model is cast first), so
    `adapted` is spent afterwards. `sub_adapter`: the NLS / elastic-width sub-network, a `SearchResult` (from
    `search_model`) or the CONFIG.json search wrote (default: the largest). A QA-SparsePEFT model comes back
    carrying its trained INT4 grid (`sqft_ov.io.grid.grid_of(model)`), which `export_model` writes as is. `sample` (tokenized inputs, e.g.
    `tokenizer(texts, return_tensors="pt", padding=True)`) measures the largest logit difference between the
    trained model and the merged one.
    """
    from sqft_ov.adapters.adapted import activate
    from sqft_ov.io.checkpoint import decoder_linears
    from sqft_ov.io.grid import Int4Grid, carry_grid

    ranks = activate(adapted, sub_adapter)
    adapted.model.float()
    adapted.model.eval()
    reference = adapted.model(**sample).logits if sample is not None else None
    # The zeros of the base trained on (lora --int4-base: the snapped base), by storage: merges write the
    # weights in place, and QA-SparsePEFT's plain model shares its tensors with the hooked one.
    zeros_before = {m.weight.data_ptr(): m.weight == 0 for m in decoder_linears(adapted.model).values()}
    model, names, grids = adapted.method.merge(adapted)  # the plain model, the merged weights, INT4 grids or None
    model.eval()
    base_zeros = kept = 0
    for name in names:
        weight = model.get_parameter(name)
        zero = zeros_before[weight.data_ptr()]
        base_zeros += int(torch.count_nonzero(zero))
        kept += int(torch.count_nonzero(zero & (weight == 0)))
    del zeros_before
    widths = share = None
    if adapted.widths is not None:  # LoNAS / EFTNAS: physically cut the chosen sub-network out
        from sqft_ov.io.blocks import Shape, decoder_share, shrink

        active = adapted.widths.active
        adapted.widths.remove()
        share = decoder_share(active, Shape.of(model.config))
        shrink(model, active)
        widths = [asdict(w) for w in active]
    diff = None
    if reference is not None:
        mask = sample["attention_mask"].bool()
        diff = float((model(**sample).logits - reference).abs()[mask].max())
    if grids is not None:
        carry_grid(model, Int4Grid(adapted.config.int4 == "sym", adapted.config.group_size, grids))
    precision = "int4 (trained grid)" if grids is not None else "float"
    return model, MergeReport(adapted.config.method, None, precision, ranks, base_zeros, kept, diff, widths, share)


def save_merged(model, tokenizer, output: Path, dtype: torch.dtype | None = None) -> None:
    """A merged model as a Hugging Face folder, with its INT4 grid beside the weights where it carries one.
    `dtype`: the float merge's storage dtype (e.g. the base checkpoint's); INT4 grid values stay float32."""
    from sqft_ov.io.grid import grid_of

    grid = grid_of(model)
    if grid is None and dtype is not None:
        model.to(dtype)
    model.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
    if grid is not None:
        grid.save(output)


def merge(adapter_dir: str | Path, output: str | Path, sub_adapter: str | Path | None = None,
          overwrite: bool = False, base: str | Path | None = None) -> MergeReport:
    """`merge_model` on the adapter folder's model, written to OUTPUT (atomically) with `merge_report.json`."""
    from sqft_ov.adapters.adapted import load_adapted
    from sqft_ov.io.checkpoint import check_model_dir, checkpoint_dtype
    from sqft_ov.io.output import atomic_output, check_output, kill_point

    output = check_output(output, overwrite, inputs=(adapter_dir, base, sub_adapter))
    base = check_model_dir(base) if base is not None else None  # --base as a Hub ID or .gguf: its local folder
    adapted, tokenizer, record = load_adapted(adapter_dir, base)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model, report = merge_model(adapted, sub_adapter, _sample_batch(tokenizer, record))
    report.output = str(output)
    kill_point("merge-merged")
    with atomic_output(output, overwrite) as tmp:
        # float merges keep the base checkpoint's dtype
        save_merged(model, tokenizer, tmp, checkpoint_dtype(Path(record["base"] if base is None else base)))
        (tmp / REPORT).write_text(json.dumps({**asdict(report), "zeros_kept_share": report.zeros_kept_share,
                                              "adapter": str(Path(adapter_dir).absolute())}, indent=2))
    return report
