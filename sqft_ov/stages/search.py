"""Pick a sub-network from a super-network: a rank per decoder block (NLS) and, for LoNAS / EFTNAS
super-networks, an MLP width and a number of KV groups per block.

Heuristics read the training record (`max`, `median`, `min`, `most-activated`, `min-loss`); `hill-climb`
starts from the median configuration and moves to the best neighbour (one coordinate one step up or down
its choices) while the validation loss improves, within a budget of evaluations and, for widths, within
`max_size` (a share of the full decoder's weights: without it, the largest widths always win on loss).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sqft_ov.adapters.elastic import WidthSpace
from sqft_ov.errors import ConfigError, SqftError
from sqft_ov.io.blocks import BlockWidth, Shape, decoder_share

STRATEGIES = ("max", "median", "min", "most-activated", "min-loss", "hill-climb")


@dataclass
class SearchResult:
    strategy: str
    ranks: list[int] | None  # one per decoder block, in block order (None: the adapter has one rank)
    validation_loss: float | None = None
    evaluated: list[dict] = field(default_factory=list)
    widths: list[BlockWidth] | None = None  # elastic base widths per block (LoNAS / EFTNAS super-networks)
    decoder_share: float | None = None  # the sub-network's decoder linear weights / the full model's

    def save(self, path: str | Path, rank_space: list[int]) -> None:
        data = {"strategy": self.strategy, "ranks": self.ranks, "rank_space": rank_space,
                "validation_loss": self.validation_loss, "evaluated": self.evaluated}
        if self.widths is not None:
            data |= {"widths": [asdict(w) for w in self.widths], "decoder_share": self.decoder_share}
        Path(path).write_text(json.dumps(data, indent=2))


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


@dataclass(frozen=True)
class _Space:
    """The coordinates search moves along: a rank per block (NLS), an MLP width and KV groups per block."""

    ranks: list[list[int]]  # per block, largest first; empty without NLS
    widths: WidthSpace | None

    def axes(self) -> list[list[int]]:
        axes = list(self.ranks)
        if self.widths is not None:
            axes += self.widths.mlp + self.widths.kv_groups
        return axes

    def split(self, point: tuple) -> tuple[list[int] | None, list[BlockWidth] | None]:
        n = len(self.ranks)
        ranks = list(point[:n]) if n else None
        if self.widths is None:
            return ranks, None
        blocks = self.widths.blocks
        mlp, kv = point[n:n + blocks], point[n + blocks:]
        return ranks, [BlockWidth(m, k) for m, k in zip(mlp, kv)]

    def pick(self, which) -> tuple:
        return tuple(which(axis) for axis in self.axes())


def _history_point(space: _Space, entry: dict) -> tuple:
    widths = entry.get("widths") or []
    return (tuple(entry["ranks"]) if space.ranks else ()) + tuple(w["mlp"] for w in widths) + \
        tuple(w["kv_groups"] for w in widths)


def _from_history(strategy: str, space: _Space, history: list[dict], fits, max_size: float | None) -> tuple:
    """most-activated: per coordinate, the value sampled most often (ties: the larger); min-loss: the sampled
    sub-network (within max_size) with the lowest mean training loss."""
    points = [_history_point(space, h) for h in history]
    if strategy == "most-activated":
        counts = [Counter(p[i] for p in points) for i in range(len(points[0]))]
        return tuple(max(axis, key=lambda v: (c[v], v)) for axis, c in zip(space.axes(), counts))
    losses: dict[tuple, list[float]] = defaultdict(list)
    for p, h in zip(points, history):
        if fits(p):
            losses[p].append(h["loss"])
    if not losses:
        raise SqftError(f"no sampled sub-network keeps at most {max_size:g} of the decoder's weights")
    return min(losses, key=lambda k: sum(losses[k]) / len(losses[k]))


def search(adapter_dir: str | Path, strategy: str, validation: str | Path | None = None, budget: int = 20,
           base: str | Path | None = None, batch_size: int = 8, max_size: float | None = None) -> SearchResult:
    """Choose a sub-network. `max_size` (elastic widths): the largest share of the full decoder's linear
    weights the sub-network may keep; hill-climb never leaves it, the heuristics fail if they do."""
    from sqft_ov.adapters.adapted import read_record
    from sqft_ov.adapters.nls import HISTORY, blocks_of
    from sqft_ov.io.checkpoint import load_config

    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown --strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if max_size is not None and not 0 < max_size <= 1:
        raise ConfigError(f"--max-size must be in (0, 1], got {max_size}")
    adapter_dir = Path(adapter_dir)
    record = read_record(adapter_dir)
    if not record["nls"] and not record.get("widths"):
        raise ConfigError(f"{adapter_dir} was trained without --nls or elastic widths: there is nothing to search")
    if max_size is not None and not record.get("widths"):
        raise ConfigError("--max-size bounds the base's widths: the adapter was trained without elastic widths")
    n_blocks = len(blocks_of(record["adapted_weights"]))
    widths_space = shape = None
    if record.get("widths"):  # shares of the decoder need the model's shape (NLS alone needs no model)
        shape = Shape.of(load_config(base or record["base"]))
        widths_space = WidthSpace.from_dict(record["widths"], shape, "the adapter's record")
    rank_axis = sorted(record["rank_space"], reverse=True)
    space = _Space([rank_axis] * n_blocks if record["nls"] else [], widths_space)

    def share(point: tuple) -> float | None:
        widths = space.split(point)[1]
        return None if widths is None else decoder_share(widths, shape)

    def fits(point: tuple) -> bool:
        return max_size is None or share(point) <= max_size + 1e-9

    def result(point: tuple, loss: float | None = None, evaluated: list | None = None) -> SearchResult:
        if not fits(point):
            raise ConfigError(f"the {strategy} sub-network keeps {share(point):.0%} of the decoder's weights, above "
                              f"--max-size {max_size:g}: use hill-climb, which searches within it")
        ranks, widths = space.split(point)
        return SearchResult(strategy, ranks, loss, evaluated or [], widths, share(point))

    median = space.pick(lambda axis: axis[len(axis) // 2])
    if strategy in ("max", "min", "median"):
        return result({"max": space.pick(lambda a: a[0]), "min": space.pick(lambda a: a[-1]),
                       "median": median}[strategy])
    if strategy in ("most-activated", "min-loss"):
        history = json.loads((adapter_dir / HISTORY).read_text())
        if not history:
            raise SqftError("no sampling history in the adapter: was it trained with --nls or elastic widths?")
        return result(_from_history(strategy, space, history, fits, max_size))

    score, evaluated, cache = _scorer(adapter_dir, base, validation, batch_size, space, share)
    start = median if fits(median) else space.pick(lambda axis: axis[-1])
    if not fits(start):
        raise ConfigError(f"even the smallest sub-network keeps {share(start):.0%} of the decoder's weights, above "
                          f"--max-size {max_size:g}")
    best, best_loss = start, score(start)
    axes = space.axes()
    while len(cache) < budget:
        neighbours = []
        for i, value in enumerate(best):
            j = axes[i].index(value)
            for k in (j - 1, j + 1):
                if 0 <= k < len(axes[i]):
                    candidate = best[:i] + (axes[i][k],) + best[i + 1:]
                    if candidate not in cache and fits(candidate):
                        neighbours.append(candidate)
        neighbours = neighbours[: budget - len(cache)]
        if not neighbours:
            break
        loss, candidate = min((score(n), n) for n in neighbours)
        if not loss < best_loss:
            break
        best, best_loss = candidate, loss
    return result(best, best_loss if math.isfinite(best_loss) else None, evaluated)


def _scorer(adapter_dir: Path, base, validation, batch_size: int, space: _Space, share):
    """score(point) -> held-out loss of that sub-network (cached), and the list of what was evaluated."""
    from sqft_ov.adapters.adapted import load_adapted
    from sqft_ov.adapters.nls import blocks_of, expand
    from sqft_ov.io.sft_data import ResponseCollator, SFTFormat, build_datasets

    adapted, tokenizer, record = load_adapted(adapter_dir, base)
    blocks = blocks_of(adapted.adapted_weights)
    fmt = SFTFormat(**record["data_format"])
    if validation is not None:
        held_out, _ = build_datasets(validation, tokenizer, fmt, 0.0, record["seed"])
    else:
        _, held_out = build_datasets(record["data"], tokenizer, fmt, record["eval_split"], record["seed"])
        if held_out is None:
            raise ConfigError("the adapter was trained without a held-out split: pass --validation DATA")
    collate = ResponseCollator(tokenizer.pad_token_id or 0)
    rows = list(held_out)
    batches = [collate(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]
    evaluated: list[dict] = []
    cache: dict[tuple, float] = {}

    def score(point: tuple) -> float:
        if point not in cache:
            ranks, widths = space.split(point)
            if ranks is not None:
                adapted.set_ranks(expand(dict(zip(blocks, ranks)), blocks))
            if widths is not None:
                adapted.set_widths(widths)
            cache[point] = validation_loss(adapted.model, batches)
            entry = {"ranks": ranks, "validation_loss": cache[point]}
            if widths is not None:
                entry |= {"widths": [asdict(w) for w in widths], "decoder_share": share(point)}
            evaluated.append(entry)
        return cache[point]

    return score, evaluated, cache
