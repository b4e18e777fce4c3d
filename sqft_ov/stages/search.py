"""Pick a sub-adapter (one rank per decoder block) from an NLS super-adapter.

Heuristics read the training record (`max`, `median`, `min`, `most-activated`, `min-loss`); `hill-climb`
starts from the median configuration and moves to the best neighbour (one block one step up or down the
rank space) while the validation loss improves, within a budget of evaluations.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sqft_ov.errors import SqftError

STRATEGIES = ("max", "median", "min", "most-activated", "min-loss", "hill-climb")


@dataclass
class SearchResult:
    strategy: str
    ranks: list[int]  # one per decoder block, in block order
    validation_loss: float | None = None
    evaluated: list[dict] = field(default_factory=list)

    def save(self, path: str | Path, rank_space: list[int]) -> None:
        Path(path).write_text(json.dumps({"strategy": self.strategy, "ranks": self.ranks,
                                          "rank_space": rank_space, "validation_loss": self.validation_loss,
                                          "evaluated": self.evaluated}, indent=2))


@torch.no_grad()
def validation_loss(model, batches: list[dict]) -> float:
    """Mean loss over response tokens of all batches (token-weighted)."""
    total, count = 0.0, 0
    for batch in batches:
        out = model(**batch)
        tokens = int((batch["labels"][:, 1:] != -100).sum())
        total += float(out.loss) * tokens
        count += tokens
    return total / max(1, count)


def search(adapter_dir: str | Path, strategy: str, validation: str | Path | None = None, budget: int = 20,
           base: str | Path | None = None, batch_size: int = 8) -> SearchResult:
    from sqft_ov.adapters.adapted import load_adapted
    from sqft_ov.adapters.adapted import read_record
    from sqft_ov.adapters.nls import HISTORY, blocks_of, expand, min_loss, most_activated
    from sqft_ov.io.sft_data import ResponseCollator, build_datasets

    if strategy not in STRATEGIES:
        raise SqftError(f"unknown --strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    adapter_dir = Path(adapter_dir)
    record = read_record(adapter_dir)
    if not record["nls"]:
        raise SqftError(f"{adapter_dir} was trained without --nls: it has one rank, there is nothing to search")
    space = sorted(record["rank_space"], reverse=True)  # largest first
    n_blocks = len(blocks_of(record["adapted_weights"]))
    median = [sorted(space)[(len(space) - 1) // 2]] * n_blocks
    if strategy in ("max", "min", "median"):
        ranks = {"max": [max(space)] * n_blocks, "min": [min(space)] * n_blocks, "median": median}[strategy]
        return SearchResult(strategy, ranks)
    if strategy in ("most-activated", "min-loss"):
        history = json.loads((adapter_dir / HISTORY).read_text())
        ranks = most_activated(history, tuple(space)) if strategy == "most-activated" else min_loss(history)
        return SearchResult(strategy, ranks)

    adapted, tokenizer, record = load_adapted(adapter_dir, base)
    blocks = blocks_of(adapted.adapted_weights)
    from sqft_ov.io.sft_data import SFTFormat

    fmt = SFTFormat(**record["data_format"])
    if validation is not None:
        held_out, _ = build_datasets(validation, tokenizer, fmt, 0.0, record["seed"])
    else:
        _, held_out = build_datasets(record["data"], tokenizer, fmt, record["eval_split"], record["seed"])
        if held_out is None:
            raise SqftError("the adapter was trained without a held-out split: pass --validation DATA")
    collate = ResponseCollator(tokenizer.pad_token_id or 0)
    rows = list(held_out)
    batches = [collate(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]
    evaluated: list[dict] = []
    cache: dict[tuple, float] = {}

    def score(ranks: list[int]) -> float:
        key = tuple(ranks)
        if key not in cache:
            adapted.set_ranks(expand(dict(zip(blocks, ranks)), blocks))
            cache[key] = validation_loss(adapted.model, batches)
            evaluated.append({"ranks": ranks, "validation_loss": cache[key]})
        return cache[key]

    best, best_loss = median, score(median)
    while len(cache) < budget:
        neighbours = []
        for i, rank in enumerate(best):
            j = space.index(rank)
            for k in (j - 1, j + 1):
                if 0 <= k < len(space):
                    neighbours.append(best[:i] + [space[k]] + best[i + 1:])
        neighbours = [n for n in neighbours if tuple(n) not in cache][: budget - len(cache)]
        if not neighbours:
            break
        losses = [(score(n), n) for n in neighbours]
        loss, candidate = min(losses)
        if not loss < best_loss:
            break
        best, best_loss = candidate, loss
    return SearchResult(strategy, best, best_loss if math.isfinite(best_loss) else None, evaluated)
