"""Comparing the configs a run asks for with those a checkpoint recorded: which differences
refuse a restore (model config, STATE_SHAPING) and which only warn (TRAJECTORY)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from trm.config import ModelConfig, flag_name
from trm.run_config import RunConfig


def to_json(config: Any) -> Any:
    """A dataclass as plain JSON data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


STATE_SHAPING = ("optim.optimizer", "optim.ema", "optim.freeze_weights",
                 "optim.global_batch_size", "data.num_workers")
"""RunConfig fields that shape the saved state (optimiser moments, EMA, ACT carry, the data
iterator's position: Grain records it per worker process)."""

TRAJECTORY = ("seed", "optim.lr", "optim.lr_min_ratio", "optim.lr_warmup_steps",
              "optim.weight_decay", "optim.puzzle_emb_lr", "optim.puzzle_emb_weight_decay",
              "optim.ema_rate", "optim.epochs", "optim.lr_batch_scaling",
              "optim.lr_reference_batch", "data.seed", "data.num_aug", "curriculum.phases",
              "halting.exploration_start", "halting.exploration_end", "halting.step_penalty")
"""RunConfig fields that a resumed run may change, though the run then is not the one a single
uninterrupted run would have been (its schedules, data order or loss change): a warning."""


ONLY_WITH = {"optim.ema_rate": "optim.ema"}
"""Run settings that matter only while another one is on: no difference when it is off on both
sides (a run without EMA may change --optim.ema-rate freely)."""


MODEL_IMPLEMENTATION = ("remat",)
"""ModelConfig fields that change how the numbers are computed, not which: free on a resume."""

MODEL_TRAJECTORY = ("act_inference",)
"""ModelConfig fields a resumed run may change (the evaluation's halting): a warning, as
TRAJECTORY. (forward_dtype refuses: the saved ACT carry is of that dtype.)"""


def config_differences(stored: dict[str, Any], requested: ModelConfig,
                       fields: tuple[str, ...] | None = None) -> list[str]:
    """'--model.field stored X, requested Y' for each differing ModelConfig field among `fields`
    (default: every field but MODEL_IMPLEMENTATION and MODEL_TRAJECTORY, the ones that refuse a
    restore).

    A field missing from `stored` (written before the field existed) counts as its default.
    """
    wanted = to_json(requested)
    defaults = to_json(ModelConfig())
    if fields is None:
        fields = tuple(k for k in wanted if k not in MODEL_IMPLEMENTATION + MODEL_TRAJECTORY)
    return [f"{flag_name('model.' + k)} stored {stored.get(k, defaults[k])!r}, "
            f"requested {wanted[k]!r}" for k in fields if stored.get(k, defaults[k]) != wanted[k]]


def run_differences(stored: dict[str, Any] | None, requested: RunConfig | None,
                    paths: tuple[str, ...] = STATE_SHAPING) -> list[str]:
    """The same for the run settings `paths` ("section.field" or a top-level "field"; none when
    either side is unknown)."""
    if stored is None or requested is None:
        return []
    wanted, defaults = to_json(requested), to_json(RunConfig())

    def get(tree: dict[str, Any], path: str) -> Any:
        *section, name = path.split(".")
        default = defaults[section[0]][name] if section else defaults[name]
        return (tree.get(section[0], {}) if section else tree).get(name, default)

    def unused(path: str) -> bool:
        switch = ONLY_WITH.get(path)
        return switch is not None and not get(stored, switch) and not get(wanted, switch)

    return [f"{flag_name(p)} stored {get(stored, p)!r}, requested {get(wanted, p)!r}"
            for p in paths if get(stored, p) != get(wanted, p) and not unused(p)]
