"""Pick a sub-network from a super-network: a rank per decoder block (NLS) and, for LoNAS / EFTNAS
super-networks, an MLP width and a number of KV groups per block.

Heuristics read the training record (`max`, `median`, `min`, `most-activated`, `min-loss`); `hill-climb`
starts from the median configuration and moves to the best neighbour (one coordinate one step up or down
its choices) while the validation loss improves, within a budget of evaluations and, for widths, within
`max_size` (a share of the full decoder's weights: without it, the largest widths always win on loss) and / or
`max_latency` (ms per decoded token, as a latency table measured by `sqft-ov latency` predicts it; see
`sqft_ov.io.latency_table`). The heuristics fail when their pick breaks a bound; `min-loss` keeps to it.
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
from sqft_ov.io.latency_table import LatencyTable, read_latency_table

STRATEGIES = ("max", "median", "min", "most-activated", "min-loss", "hill-climb")


@dataclass
class SearchResult:
    strategy: str
    ranks: list[int] | None  # one per decoder block, in block order (None: the adapter has one rank)
    validation_loss: float | None = None
    evaluated: list[dict] = field(default_factory=list)
    widths: list[BlockWidth] | None = None  # elastic base widths per block (LoNAS / EFTNAS super-networks)
    decoder_share: float | None = None  # the sub-network's decoder linear weights / the full model's
    scored_on: str | None = None  # hill-climb: the held-out data its validation losses come from
    predicted_ms_per_token: float | None = None  # decode time the latency table predicts (None: no table)
    warnings: list[str] = field(default_factory=list)  # e.g. a latency table measured on another CPU

    def save(self, path: str | Path, rank_space: list[int]) -> None:
        data = {"strategy": self.strategy, "ranks": self.ranks, "rank_space": rank_space,
                "validation_loss": self.validation_loss, "evaluated": self.evaluated, "scored_on": self.scored_on}
        if self.widths is not None:
            data |= {"widths": [asdict(w) for w in self.widths], "decoder_share": self.decoder_share}
        if self.predicted_ms_per_token is not None:
            data["predicted_ms_per_token"] = self.predicted_ms_per_token
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


@dataclass
class _Limits:
    """The bounds a sub-network must meet, on its widths: a share of the decoder's weights (`max_size`) and a
    decode time predicted by a latency table (`max_latency`); the table alone only annotates."""

    space: _Space
    shape: Shape | None
    max_size: float | None = None
    max_latency: float | None = None
    table: LatencyTable | None = None

    def share(self, point: tuple) -> float | None:
        widths = self.space.split(point)[1]
        return None if widths is None else decoder_share(widths, self.shape)

    def ms(self, point: tuple) -> float | None:
        return None if self.table is None else self.table.predict(self.space.split(point)[1])

    def fits(self, point: tuple) -> bool:
        return ((self.max_size is None or self.share(point) <= self.max_size + 1e-9)
                and (self.max_latency is None or self.ms(point) <= self.max_latency + 1e-9))

    def bounds(self) -> str:
        given = [f"--max-size {self.max_size:g}" if self.max_size is not None else "",
                 f"--max-latency {self.max_latency:g} ms" if self.max_latency is not None else ""]
        return " and ".join(b for b in given if b)

    def excess(self, point: tuple) -> str:
        """What `point` breaks, e.g. "keeps 80% of the decoder's weights, above --max-size 0.7"."""
        out = []
        if self.max_size is not None and self.share(point) > self.max_size + 1e-9:
            out.append(f"keeps {self.share(point):.0%} of the decoder's weights, above --max-size {self.max_size:g}")
        if self.max_latency is not None and self.ms(point) > self.max_latency + 1e-9:
            out.append(f"is predicted at {self.ms(point):.4g} ms per token, above --max-latency {self.max_latency:g}")
        return " and ".join(out)

    def annotate(self, point: tuple) -> dict:
        out = {"decoder_share": self.share(point)}
        return out | ({"predicted_ms_per_token": self.ms(point)} if self.table is not None else {})

    def starts(self, median: tuple) -> list[tuple]:
        """Where hill-climb may start: the median, the smallest and (with a table) the fastest sub-network."""
        smallest = self.space.pick(lambda axis: axis[-1])
        out = [median, smallest]
        if self.table is not None:  # per block, the measured pair of its choices predicted fastest
            n = len(self.space.ranks)
            blocks = self.space.widths.blocks
            fastest = [min(((m, k) for m in self.space.widths.mlp[i] for k in self.space.widths.kv_groups[i]),
                           key=lambda pair: self.table.points[pair]) for i in range(blocks)]
            out.append(median[:n] + tuple(m for m, _ in fastest) + tuple(k for _, k in fastest))
        return out


def _from_history(strategy: str, space: _Space, history: list[dict], limits: _Limits) -> tuple:
    """most-activated: per coordinate, the value sampled most often (ties: the larger); min-loss: the sampled
    sub-network (within the bounds) with the lowest mean training loss."""
    points = [_history_point(space, h) for h in history]
    if strategy == "most-activated":
        counts = [Counter(p[i] for p in points) for i in range(len(points[0]))]
        return tuple(max(axis, key=lambda v: (c[v], v)) for axis, c in zip(space.axes(), counts))
    losses: dict[tuple, list[float]] = defaultdict(list)
    for p, h in zip(points, history):
        if limits.fits(p):
            losses[p].append(h["loss"])
    if not losses:
        raise ConfigError(f"no sampled sub-network meets {limits.bounds()}: use hill-climb, or a looser bound")
    return min(losses, key=lambda k: sum(losses[k]) / len(losses[k]))


def _check(strategy: str, max_size: float | None, nls: bool, elastic: bool, what: str,
           max_latency: float | None = None, latency_table=None) -> None:
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown --strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if max_size is not None and not 0 < max_size <= 1:
        raise ConfigError(f"--max-size must be in (0, 1], got {max_size}")
    if max_latency is not None and latency_table is None:
        raise ConfigError("--max-latency needs --latency-table FILE, the ms per token measured for this adapter: "
                          "write one with `sqft-ov latency ADAPTER TABLE`")
    if max_latency is not None and not (math.isfinite(max_latency) and max_latency > 0):
        raise ConfigError(f"--max-latency must be a positive number of ms per token, got {max_latency}")
    if not nls and not elastic:
        raise ConfigError(f"{what} was trained without --nls or elastic widths: there is nothing to search")
    if max_size is not None and not elastic:
        raise ConfigError("--max-size bounds the base's widths: the adapter was trained without elastic widths")
    if latency_table is not None and not elastic:
        raise ConfigError("a latency table times the base's widths: the adapter was trained without elastic widths, "
                          "so its sub-networks all decode alike; drop --max-latency / --latency-table")


def _latency_table(table, widths: WidthSpace | None, shape: Shape | None, what: str,
                   warnings: list[str]) -> LatencyTable | None:
    """The latency table (a path or one read already), checked against the adapter's space; a line in
    `warnings` when it was measured on another CPU."""
    from sqft_ov.io.runtime import cpu_model

    if table is None:
        return None
    table = table if isinstance(table, LatencyTable) else read_latency_table(table)
    table.check_matches(widths.to_dict(), asdict(shape), what)
    if (line := table.machine_warning(cpu_model())) is not None:
        warnings.append(line)
    return table


def _choose(strategy: str, space: _Space, limits: _Limits, history, scorer, budget: int) -> SearchResult:
    """The search itself. `history()`: the sampled configurations and their losses (the heuristics);
    `scorer(annotate)`: (score(point) -> validation loss, evaluated, cache) for hill-climb."""

    def result(point: tuple, loss: float | None = None, evaluated: list | None = None) -> SearchResult:
        if not limits.fits(point):
            raise ConfigError(f"the {strategy} sub-network {limits.excess(point)}: use hill-climb, which searches "
                              "within the bounds")
        ranks, widths = space.split(point)
        return SearchResult(strategy, ranks, loss, evaluated or [], widths, limits.share(point),
                            predicted_ms_per_token=limits.ms(point))

    median = space.pick(lambda axis: axis[len(axis) // 2])
    if strategy in ("max", "min", "median"):
        return result({"max": space.pick(lambda a: a[0]), "min": space.pick(lambda a: a[-1]),
                       "median": median}[strategy])
    if strategy in ("most-activated", "min-loss"):
        entries = history()
        if not entries:
            raise SqftError("no sampling history in the adapter: was it trained with --nls or elastic widths?")
        return result(_from_history(strategy, space, entries, limits))

    starts = limits.starts(median)
    start = next((p for p in starts if limits.fits(p)), None)
    if start is None:  # before the model loads
        raise ConfigError(f"no sub-network meets {limits.bounds()}: the smallest {limits.excess(starts[1])}"
                          + (f", the fastest {limits.excess(starts[2])}" if len(starts) > 2 else ""))
    score, evaluated, cache = scorer(limits.annotate)
    best, best_loss = start, score(start)
    axes = space.axes()
    while len(cache) < budget:
        neighbours = []
        for i, value in enumerate(best):
            j = axes[i].index(value)
            for k in (j - 1, j + 1):
                if 0 <= k < len(axes[i]):
                    candidate = best[:i] + (axes[i][k],) + best[i + 1:]
                    if candidate not in cache and limits.fits(candidate):
                        neighbours.append(candidate)
        neighbours = neighbours[: budget - len(cache)]
        if not neighbours:
            break
        loss, candidate = min((score(n), n) for n in neighbours)
        if not loss < best_loss:
            break
        best, best_loss = candidate, loss
    return result(best, best_loss if math.isfinite(best_loss) else None, evaluated)


def search(adapter_dir: str | Path, strategy: str, validation: str | Path | None = None, budget: int = 20,
           base: str | Path | None = None, batch_size: int = 8, max_size: float | None = None,
           max_latency: float | None = None, latency_table: str | Path | LatencyTable | None = None) -> SearchResult:
    """Choose a sub-network of a finetune OUTPUT folder. `max_size` (elastic widths): the largest share of the full
    decoder's linear weights the sub-network may keep; `max_latency`: the most ms per decoded token it may take, as
    `latency_table` (written by `sqft-ov latency` for this adapter's widths) predicts it. Hill-climb never leaves the
    bounds, the heuristics fail if they do. A table alone sets `predicted_ms_per_token` without bounding anything.
    The heuristics read the folder's record only; hill-climb loads the model (`search_model` on it)."""
    from sqft_ov.adapters.adapted import read_record
    from sqft_ov.adapters.nls import HISTORY, blocks_of
    from sqft_ov.io.checkpoint import load_config

    adapter_dir = Path(adapter_dir)
    record = read_record(adapter_dir)
    _check(strategy, max_size, record["nls"], bool(record.get("widths")), str(adapter_dir), max_latency,
           latency_table)
    n_blocks = len(blocks_of(record["adapted_weights"]))
    widths_space = shape = None
    if record.get("widths"):  # shares of the decoder need the model's shape (NLS alone needs no model)
        shape = Shape.of(load_config(base or record["base"]))
        widths_space = WidthSpace.from_dict(record["widths"], shape, "the adapter's record")
    rank_axis = sorted(record["rank_space"], reverse=True)
    space = _Space([rank_axis] * n_blocks if record["nls"] else [], widths_space)
    warnings: list[str] = []
    table = _latency_table(latency_table, widths_space, shape, str(adapter_dir), warnings)
    limits = _Limits(space, shape, max_size, max_latency, table)

    def scorer(annotate):
        from sqft_ov.adapters.adapted import load_adapted

        from sqft_ov.io.data import IN_MEMORY

        if validation is None and record["data"] == IN_MEMORY:
            raise ConfigError(f"{adapter_dir} was trained on data in memory: pass --validation DATA to score on")
        adapted, tokenizer, _ = load_adapted(adapter_dir, base)
        held_out = validation if validation is not None else record["data"]
        split = 0.0 if validation is not None else record["eval_split"]
        return _scorer(adapted, tokenizer, held_out, split, batch_size, space, annotate)

    result = _choose(strategy, space, limits, lambda: json.loads((adapter_dir / HISTORY).read_text()), scorer, budget)
    result.warnings = warnings
    if result.evaluated:
        result.scored_on = (str(Path(validation).absolute()) if validation is not None
                            else f"{record['data']} (the {record['eval_split']:.0%} held out of training)")
    return result


def search_model(adapted, tokenizer, strategy: str, validation=None, history: list[dict] | None = None,
                 budget: int = 20, batch_size: int = 8, max_size: float | None = None,
                 max_latency: float | None = None, latency_table: str | Path | LatencyTable | None = None
                 ) -> SearchResult:
    """Choose a sub-network of an `Adapted` model in memory (`Trained.adapted`); `merge_model` takes the result.

    `history`: the sampled configurations (`Trained.nls_history`) for `most-activated` / `min-loss`; `validation`:
    held-out data (file, `datasets.Dataset` or rows) that `hill-climb` scores; the model's ranks and widths are
    left at the last configuration scored (merge_model sets the chosen one). `max_size`, `max_latency` and
    `latency_table` bound the sub-network as `search`'s do.
    """
    from sqft_ov.adapters.nls import blocks_of

    config = adapted.config
    _check(strategy, max_size, config.nls, adapted.widths is not None, "the model", max_latency, latency_table)
    widths_space = adapted.widths.space if adapted.widths is not None else None
    shape = Shape.of(adapted.model.config) if widths_space is not None else None
    n_blocks = len(blocks_of(adapted.adapted_weights))
    space = _Space([sorted(config.rank_space, reverse=True)] * n_blocks if config.nls else [], widths_space)
    warnings: list[str] = []
    table = _latency_table(latency_table, widths_space, shape, "the model", warnings)

    def scorer(annotate):
        if validation is None:
            raise ConfigError("hill-climb scores sub-networks on held-out data: pass validation=")
        return _scorer(adapted, tokenizer, validation, 0.0, batch_size, space, annotate)

    result = _choose(strategy, space, _Limits(space, shape, max_size, max_latency, table), lambda: history or [],
                     scorer, budget)
    result.warnings = warnings
    return result


def _scorer(adapted, tokenizer, data, eval_split: float, batch_size: int, space: _Space, annotate):
    """score(point) -> held-out loss of that sub-network (cached), and the list of what was evaluated. With
    `eval_split` 0 all of `data` is held out; else its held-out split as finetune made it."""
    from sqft_ov.adapters.nls import blocks_of, expand
    from sqft_ov.io.sft_data import ResponseCollator, build_datasets

    blocks = blocks_of(adapted.adapted_weights)
    config = adapted.config
    adapted.model.eval()
    if eval_split == 0:
        held_out, _ = build_datasets(data, tokenizer, config.data_format, 0.0, config.seed)
    else:
        _, held_out = build_datasets(data, tokenizer, config.data_format, eval_split, config.seed)
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
                entry |= {"widths": [asdict(w) for w in widths], **annotate(point)}
            evaluated.append(entry)
        return cache[point]

    return score, evaluated, cache
