"""The scaling-study catalog as transformations of one baseline.

Every experiment is a named set of dotted-path overrides of `baseline()`; its group names the
fields it may change (`Group.fields`) and the question it answers. Entries whose config equals
an earlier entry's (e.g. exp01c, hidden 512, is the baseline) share that entry's run: see
`canonical`. Patterns select entries (`select`): a name (`exp05_a`), a group or the prefix of
group names (`exp02a`, `exp02`, `contrib`), a glob of names or groups (`exp05_[ab]`), or `all`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sweeps.configs import get_path, override
from trm.presets import ARCH_YAML, PRESETS
from trm.run_config import RunConfig

PRESET = "sudoku-extreme"
"""The preset the baseline derives from; generated commands start with it."""

BASELINE: dict[str, Any] = {
    "model.mlp_t": True, "model.pos_encodings": "none", "model.hidden_size": 512,
    "model.num_heads": 8, "model.L_layers": 2, "model.H_cycles": 3, "model.L_cycles": 6,
    "model.halt_max_steps": 16, "model.halt_exploration_prob": 0.1,
    "model.forward_dtype": "bfloat16",
    "optim.epochs": 50000, "eval.eval_interval": 5000, "optim.global_batch_size": 768,
    "optim.lr": 1e-4, "optim.lr_min_ratio": 1.0, "optim.lr_warmup_steps": 2000,
    "optim.puzzle_emb_lr": 1e-4, "optim.weight_decay": 1.0, "optim.puzzle_emb_weight_decay": 1.0,
    "optim.optimizer": "adam_atan2", "optim.b1": 0.9, "optim.b2": 0.95,
    "optim.ema": True, "optim.ema_rate": 0.999, "seed": 0, "data.seed": 0,
    "data.data_dir": "data/sudoku-extreme-1k-aug-1000", "data.num_train": 1000,
    "data.num_aug": 1000,
}
"""The study's baseline, set explicitly on top of the preset (num_aug 1000 rather than the
preset's "default" pool, so that exp04b_1000 is the baseline and CPU-scale data agrees)."""


@functools.cache
def baseline() -> RunConfig:
    """The study's baseline run config."""
    return override(PRESETS[PRESET][1], BASELINE)


@dataclasses.dataclass(frozen=True)
class Group:
    name: str
    title: str
    variable: str
    """The variable in words, as the study's table names it."""
    fields: tuple[str, ...]
    """Dotted config paths its entries may change relative to the baseline."""
    question: str
    further: bool = False
    """From the study plan's further items (not the main table)."""


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    group: Group
    description: str
    overrides: tuple[tuple[str, Any], ...]

    @property
    def question(self) -> str:
        return self.group.question

    @property
    def varies(self) -> tuple[str, ...]:
        return self.group.fields

    def config(self) -> RunConfig:
        """baseline() with this experiment's overrides."""
        return override(baseline(), dict(self.overrides))


GROUPS: dict[str, Group] = {}
CATALOG: list[Experiment] = []


def _add(group: Group, rows: Iterable[tuple[str, tuple[Any, ...]]],
         describe: Callable[..., str] | None = None) -> None:
    """Register a group and one experiment per (name, values of group.fields)."""
    GROUPS[group.name] = group
    for name, values in rows:
        if len(values) != len(group.fields):
            raise ValueError(f"{name}: {len(values)} values for fields {group.fields}")
        text = describe(*values) if describe else ", ".join(
            f"{f.rsplit('.', 1)[-1]}={v}" for f, v in zip(group.fields, values))
        CATALOG.append(Experiment(name, group, text, tuple(zip(group.fields, values))))


def _letters(prefix: str, values: Sequence[Any], sep: str = "") -> list[tuple[str, Any]]:
    return [(f"{prefix}{sep}{chr(ord('a') + i)}", v) for i, v in enumerate(values)]


def _tuples(values: Iterable[Any]) -> list[Any]:
    return [v if isinstance(v, tuple) else (v,) for v in values]


def sudoku_dir(puzzles: int) -> str:
    """Data set directory of a Sudoku-Extreme training subsample (x1000 augmentations), built
    with `python -m data build sudoku --subsample-size N --out DIR`."""
    size = f"{puzzles // 1000}k" if puzzles % 1000 == 0 else str(puzzles)
    return f"data/sudoku-extreme-{size}-aug-1000"


def _lr_scaled(kind: str, ref: int, lr: float = 1e-4) -> Callable[..., str]:
    power = 0.5 if kind == "sqrt" else 1.0
    return lambda batch, *_: f"global batch {batch}, lr {lr * (batch / ref) ** power:.2g} " \
                             f"({kind} scaling from {lr:g} at {ref})"


def _puzzles(n: int, _dir: str) -> str:
    return f"{n} training puzzles (x1000 augmentations; data set {_dir})"


# ---------------------------------------------------------------------------------------------
# the study's table

_add(Group("baseline", "Baseline", "-", (), "What does the reference recipe reach?"),
     [("baseline", ())], lambda: "the study's baseline (sudoku-extreme preset, 1000 aug)")
_add(Group("exp01", "Model size", "hidden_size (heads)", ("model.hidden_size", "model.num_heads"),
           "How does accuracy scale with parameters, and where does it saturate?"),
     [(n, v) for n, v in _letters("exp01", [(256, 4), (384, 6), (512, 8), (768, 8), (1024, 8),
                                            (1536, 8)])],
     lambda h, heads: f"hidden {h}, {heads} heads")
_add(Group("exp02a", "Latent recursion", "L_cycles", ("model.L_cycles",),
           "How much does latent recursion depth (L_cycles) buy, and does it widen the "
           "train-test gap?"),
     [(f"exp02a_{i + 1:02d}", (v,)) for i, v in enumerate((2, 4, 6, 8, 10, 12))],
     lambda v: f"L_cycles {v}")
_add(Group("exp02b", "High-level cycles", "H_cycles", ("model.H_cycles",),
           "How much do high-level cycles (H_cycles) buy?"),
     [(f"exp02b_{i + 1:02d}", (v,)) for i, v in enumerate((1, 2, 3, 4, 5))],
     lambda v: f"H_cycles {v}")
_add(Group("exp03", "Depth vs recursion", "(L_layers, L_cycles)",
           ("model.L_layers", "model.L_cycles"),
           "At equal effective depth (L_layers x L_cycles = 12), are layers or recursion "
           "better per unit of time?"),
     _letters("exp03", [(1, 12), (2, 6), (3, 4), (4, 3), (6, 2)]),
     lambda layers, cycles: f"{layers} layers x {cycles} L_cycles")
_add(Group("exp04a", "Training-set size", "training puzzles", ("data.num_train", "data.data_dir"),
           "How much data is needed (minimum puzzles for 85%)? Epochs are fixed, so smaller "
           "sets train fewer steps."),
     [(f"exp04a_{n}", (n, sudoku_dir(n))) for n in (100, 250, 500, 1000, 2000, 5000)], _puzzles)
_add(Group("exp04b", "Augmentation", "augmentations per puzzle", ("data.num_aug",),
           "How many augmented copies per puzzle are needed?"),
     [(f"exp04b_{n:04d}", (n,)) for n in (10, 100, 500, 1000, 2000)],
     lambda n: f"{n} augmentations per puzzle")
_add(Group("exp05", "Supervision steps", "halt_max_steps", ("model.halt_max_steps",),
           "How do accuracy and mean halting steps change with the supervision-step budget?"),
     _letters("exp05", _tuples((4, 8, 12, 16, 24, 32)), "_"),
     lambda n: f"halt_max_steps {n}")
_BATCH = ("optim.global_batch_size", "optim.lr_batch_scaling", "optim.lr_reference_batch")
_add(Group("exp06", "Batch size", "global batch (lr)", _BATCH,
           "What is the critical batch size (sqrt lr scaling), and the throughput per batch?"),
     _letters("exp06", [(b, "sqrt", 6144) for b in (1536, 3072, 6144, 12288, 24576, 49152)],
              "_"), _lr_scaled("sqrt", 6144))
_add(Group("exp07", "Precision", "forward dtype", ("model.forward_dtype",),
           "Do bf16 / fp16 forward passes keep fp32 accuracy, and how much faster are they?"),
     _letters("exp07", _tuples(("float32", "bfloat16", "float16"))),
     lambda d: f"forward_dtype {d}")
_add(Group("exp08", "EMA", "(ema, rate)", ("optim.ema", "optim.ema_rate"),
           "Does the EMA of the weights matter, and at which rate?"),
     _letters("exp08", [(False, 0.999), (True, 0.99), (True, 0.995), (True, 0.999),
                        (True, 0.9995)]),
     lambda on, rate: f"EMA {rate}" if on else "no EMA")
_add(Group("exp09", "Optimiser", "(optimiser, beta2)", ("optim.optimizer", "optim.b2"),
           "Is AdamATan2 needed, and how sensitive is training to beta2?"),
     _letters("exp09", [("adam_atan2", 0.95), ("adamw", 0.95), ("adamw", 0.99),
                        ("adamw", 0.999), ("lion", 0.99)]),
     lambda opt, b2: f"{opt}, beta2 {b2}")
_add(Group("exp10", "LR schedule", "(lr, min ratio)", ("optim.lr", "optim.lr_min_ratio"),
           "Which peak lr and decay work best?"),
     _letters("exp10", [(3e-5, 1.0), (1e-4, 1.0), (3e-4, 1.0), (1e-4, 0.1), (1e-4, 0.01)]),
     lambda lr, r: f"lr {lr:g} " + ("constant" if r == 1.0 else f"cosine to {r:g} x lr"))
CURRICULUM = ((0.0, 1, 2), (0.2, 2, 4), (0.4, 3, 6))
"""Contribution 1: (start fraction, H_cycles, L_cycles): shallow first, full depth from 40%."""
_add(Group("contrib01", "Recursion-depth curriculum", "recursion depth over training",
           ("curriculum.phases",),
           "Does starting shallow and deepening reach the same accuracy in ~30% fewer "
           "epochs?"),
     [("contrib01_baseline", ((),)), ("contrib01_curriculum", (CURRICULUM,))],
     lambda p: "fixed H3 L6" if not p else "curriculum " + ", ".join(
         f"H{h} L{l_} from {s:.0%}" for s, h, l_ in p))
_add(Group("contrib02", "Adaptive halting", "halt exploration prob",
           ("halting.exploration_start", "halting.exploration_end"),
           "Does annealing halting exploration 0.3 -> 0.05 keep accuracy with ~25% fewer "
           "inference steps?"),
     [("contrib02_baseline", (None, None)), ("contrib02_adaptive", (0.3, 0.05))],
     lambda a, b: "fixed exploration 0.1" if a is None else f"exploration {a} -> {b} "
                                                            "(linear over training)")

# ---------------------------------------------------------------------------------------------
# Further items of the study plan (entries equal to one above share its run)

_add(Group("tn_grid", "T x n grid", "(H_cycles, L_cycles)", ("model.H_cycles", "model.L_cycles"),
           "How do H_cycles (T) and L_cycles (n) interact?", further=True),
     [(f"tn_H{h}_L{l_}", (h, l_)) for h in (2, 3, 4) for l_ in (2, 4, 6)],
     lambda h, l_: f"H_cycles {h}, L_cycles {l_}")
_add(Group("mlp_vs_attn", "MLP vs attention", "(mlp_t, positions)",
           ("model.mlp_t", "model.pos_encodings"),
           "Is the MLP token mixer better than attention on Sudoku?", further=True),
     [("arch_mlp", (True, "none")), ("arch_attn", (False, "rope"))],
     lambda mlp, pos: "mlp_t, no positions" if mlp else f"attention, {pos} positions")
_add(Group("ema_onoff", "EMA on/off", "ema", ("optim.ema",),
           "Does the EMA matter at all?", further=True),
     [("ema_on", (True,)), ("ema_off", (False,))], lambda on: "EMA 0.999" if on else "no EMA")
_add(Group("nsup", "Nsup", "halt_max_steps", ("model.halt_max_steps",),
           "Accuracy vs the number of supervision steps (Nsup).", further=True),
     [(f"nsup_{n:02d}", (n,)) for n in (4, 8, 16, 32)], lambda n: f"halt_max_steps {n}")
_add(Group("model_params", "Model 7M/15M/28M", "hidden_size (parameters)",
           ("model.hidden_size",),
           "Accuracy at 7M, 15M and 28M parameters (mlp_t, 8 heads).", further=True),
     [("size_07m", (640,)), ("size_15m", (960,)), ("size_28m", (1280,))],
     lambda h: f"hidden {h} ({ {640: '7.2M', 960: '15.1M', 1280: '27.9M'}[h]} parameters)")
_add(Group("data_size", "Data 1K/5K/10K", "training puzzles", ("data.num_train", "data.data_dir"),
           "Accuracy with 1K, 5K and 10K training puzzles.", further=True),
     [(f"data_{n // 1000:02d}k", (n, sudoku_dir(n))) for n in (1000, 5000, 10000)], _puzzles)
_add(Group("lr_batch", "LR x batch (linear)", "global batch (lr)", _BATCH,
           "Does linear lr scaling hold from batch 256 to 2048 (lr 1e-4 to 8e-4)?", further=True),
     [(f"lr_batch_{b:04d}", (b, "linear", 256)) for b in (256, 512, 1024, 2048)],
     _lr_scaled("linear", 256))
_add(Group("compute_halt", "Compute-aware halting", "penalty per extra step",
           ("halting.step_penalty",),
           "How much inference compute does a halting penalty save, at what accuracy "
           "(Pareto accuracy vs steps)?", further=True),
     [(f"halt_penalty_{str(p).replace('.', 'p')}", (p,)) for p in (0.0, 0.01, 0.03, 0.1)],
     lambda p: f"step penalty {p}")
_add(Group("ckpt_avg", "Checkpoint averaging", "checkpoints averaged",
           ("eval.average_last_k", "checkpoint.keep_last"),
           "Does evaluating the average of the last k checkpoints (SWA-style) help?",
           further=True),
     [(f"avg_last_{k}", (k, max(k, 2))) for k in (1, 3, 5)],
     lambda k, keep: "last checkpoint" if k == 1 else f"average of the last {k} checkpoints")

_ARCH_FIELDS = ("model.arch", "model.mlp_t", "model.pos_encodings", "model.H_cycles",
                "model.L_cycles", "model.L_layers", "model.H_layers", "model.num_heads")


def _arch_entry(arch: str, mlp_t: bool) -> tuple[Any, ...]:
    """The official config/arch/<arch>.yaml cycles, layers and heads, with the mlp_t token
    mixer (no positions) or attention (RoPE)."""
    values = {**{f: get_path(baseline(), f) for f in _ARCH_FIELDS}, "model.arch": arch,
              "model.mlp_t": mlp_t, "model.pos_encodings": "none" if mlp_t else "rope"}
    values.update({f"model.{k}": v for k, v in ARCH_YAML[arch].items()})
    return tuple(values[f] for f in _ARCH_FIELDS)


_add(Group("arch", "TRM vs HRM vs transformer", "architecture (token mixer)", _ARCH_FIELDS,
           "At the same data and budget, how do TRM, HRM (27M) and a plain transformer with "
           "the same deep supervision compare, and TRM's single-z / six-latent ablations?",
           further=True),
     [("arch_trm_mlp", _arch_entry("trm", True)), ("arch_trm_attn", _arch_entry("trm", False)),
      ("arch_hrm_mlp", _arch_entry("hrm", True)), ("arch_hrm_attn", _arch_entry("hrm", False)),
      ("arch_transformer", _arch_entry("transformers_baseline", False)),
      ("arch_trm_singlez_mlp", _arch_entry("trm_singlez", True)),
      ("arch_trm_hier6_mlp", _arch_entry("trm_hier6", True))],
     lambda arch, mlp_t, *_: f"{arch}, " + ("mlp_t, no positions" if mlp_t
                                             else "attention, RoPE"))

BY_NAME: dict[str, Experiment] = {e.name: e for e in CATALOG}
if len(BY_NAME) != len(CATALOG):
    raise RuntimeError("duplicate experiment names in the catalog")


def _matches(pattern: str, e: Experiment) -> bool:
    if pattern in ("all", "*"):
        return True
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(e.name, pattern) or fnmatch.fnmatchcase(e.group.name, pattern)
    return e.name == pattern or e.group.name.startswith(pattern)


def select(patterns: str | Sequence[str] = "all") -> list[Experiment]:
    """Entries matching any pattern (comma/space separated), in catalog order; an unmatched
    or blank pattern raises ValueError naming the groups (a blank one, e.g. an unset shell
    variable, would otherwise select everything)."""
    if isinstance(patterns, str):
        patterns = [patterns]
    parts = [p for s in patterns for p in s.replace(",", " ").split()]
    if not parts:
        raise ValueError(f"no experiment pattern given (blank: {list(patterns)!r}); give "
                         f"names, groups or 'all'; groups: {', '.join(GROUPS)}")
    for p in parts:
        if not any(_matches(p, e) for e in CATALOG):
            raise ValueError(f"pattern {p!r} matches no experiment; groups: "
                             f"{', '.join(GROUPS)}")
    return [e for e in CATALOG if any(_matches(p, e) for p in parts)]


@functools.cache
def _canonical_names() -> dict[str, str]:
    first: dict[RunConfig, str] = {}
    return {e.name: first.setdefault(e.config(), e.name) for e in CATALOG}


def canonical(e: Experiment | str) -> Experiment:
    """The first catalog entry with the same config: the one whose run `e` shares."""
    return BY_NAME[_canonical_names()[e if isinstance(e, str) else e.name]]


def aliases(e: Experiment | str) -> list[Experiment]:
    """All entries (including `e`) that share `e`'s run."""
    name = canonical(e).name
    return [x for x in CATALOG if _canonical_names()[x.name] == name]
