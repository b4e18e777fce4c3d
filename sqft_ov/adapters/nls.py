"""Neural Low-rank adapter Search (NLS): elastic adapter ranks, one per decoder block, sampled every step.

Training a super-adapter with a random rank per block each optimizer step makes every sub-adapter usable;
the activated configurations and their losses are recorded so that `sqft_ov.stages.search` can pick one
afterwards. Sampling is a pure function of (seed, step), so a resumed run samples exactly what an
uninterrupted one would.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

from sqft_ov.errors import SqftError

HISTORY = "nls_history.json"
_BLOCK = re.compile(r"\.layers\.(\d+)\.")


def check_rank_space(rank_space: tuple[int, ...]) -> tuple[int, ...]:
    if not rank_space:
        raise SqftError("--rank-space needs at least one rank")
    if len(set(rank_space)) != len(rank_space):
        raise SqftError(f"--rank-space {' '.join(map(str, rank_space))} has duplicates: list each rank once")
    if min(rank_space) < 1:
        raise SqftError("--rank-space ranks must be positive")
    return tuple(sorted(rank_space, reverse=True))


def blocks_of(weight_names) -> dict[int, list[str]]:
    """Decoder block index -> the adapted weights in it (they share one rank)."""
    out: dict[int, list[str]] = defaultdict(list)
    for name in weight_names:
        match = _BLOCK.search(name)
        if match is None:
            raise SqftError(f"cannot tell which decoder block {name} belongs to: NLS needs model.layers.N.*")
        out[int(match.group(1))].append(name)
    return dict(sorted(out.items()))


def expand(ranks: dict[int, int], blocks: dict[int, list[str]]) -> dict[str, int]:
    return {name: ranks[b] for b, names in blocks.items() for name in names}


class RankSampler(TrainerCallback):
    """Samples a rank per block at each optimizer step and records (ranks, loss)."""

    def __init__(self, blocks: dict[int, list[str]], rank_space: tuple[int, ...], seed: int,
                 apply: Callable[[dict[str, int]], None]):
        self.blocks, self.rank_space, self.seed, self.apply = blocks, rank_space, seed, apply
        self.history: list[dict] = []
        self.current: dict[int, int] = {}
        self._losses: list[float] = []

    def sample(self, step: int) -> dict[int, int]:
        rng = random.Random(f"{self.seed}:{step}")
        return {b: rng.choice(self.rank_space) for b in self.blocks}

    def on_step_begin(self, args, state, control, **kwargs):
        self.current = self.sample(state.global_step)
        self.apply(expand(self.current, self.blocks))

    def record(self, loss: float) -> None:
        self._losses.append(loss)

    def on_step_end(self, args, state, control, **kwargs):
        if self._losses:
            self.history.append({"step": state.global_step, "ranks": [self.current[b] for b in self.blocks],
                                 "loss": sum(self._losses) / len(self._losses)})
        self._losses = []

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir() and state.is_world_process_zero:
            (folder / HISTORY).write_text(json.dumps(self.history))

    def load(self, checkpoint: str | Path) -> None:
        path = Path(checkpoint) / HISTORY
        if path.is_file():
            self.history = json.loads(path.read_text())

    def on_train_end(self, args, state, control, **kwargs):
        maximal = {b: max(self.rank_space) for b in self.blocks}
        self.apply(expand(maximal, self.blocks))  # the saved super-adapter is used at full rank by default


def most_activated(history: list[dict], rank_space: tuple[int, ...]) -> list[int]:
    """Per block, the rank sampled most often (ties go to the larger rank)."""
    if not history:
        raise SqftError("no NLS history: was the adapter trained with --nls?")
    width = len(history[0]["ranks"])
    counts = [Counter(h["ranks"][i] for h in history) for i in range(width)]
    return [max(rank_space, key=lambda r: (c[r], r)) for c in counts]


def min_loss(history: list[dict]) -> list[int]:
    """The sampled configuration with the lowest mean training loss."""
    if not history:
        raise SqftError("no NLS history: was the adapter trained with --nls?")
    losses: dict[tuple, list[float]] = defaultdict(list)
    for h in history:
        losses[tuple(h["ranks"])].append(h["loss"])
    return list(min(losses, key=lambda k: sum(losses[k]) / len(losses[k])))


def load_sub_adapter(path: str | Path, rank_space: list[int], blocks: int) -> list[int]:
    """Ranks from a CONFIG.json, checked against the adapter's rank space and block count."""
    try:
        ranks = json.loads(Path(path).read_text())["ranks"]
    except (OSError, ValueError, KeyError) as exc:
        raise SqftError(f"cannot read a sub-adapter configuration from {path}: expected JSON with 'ranks'") from exc
    if len(ranks) != blocks:
        raise SqftError(f"{path} has {len(ranks)} ranks but the adapter has {blocks} decoder blocks")
    outside = [r for r in ranks if r not in rank_space]
    if outside:
        raise SqftError(f"{path}: rank {outside[0]} is outside the adapter's rank space {rank_space}")
    return ranks
