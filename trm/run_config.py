"""Run configuration: frozen, tyro-friendly dataclasses, named presets and the CLI parser.

`python train.py <preset> --model.hidden-size 256 --optim.lr 3e-4 --no-track`: the first
argument picks a preset from `PRESETS`, flags override its fields (`parse_cli`).
The model's vocab_size / seq_len / num_puzzle_identifiers in a preset are the data set's
published values; the training loop should take them from the data set's metadata.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Sequence
from typing import Annotated, Literal

import tyro

from trm.config import ConfigError, ModelConfig, flag_error, require
from trm.curriculum import validate_phases

Generated = Literal["none", "sudoku-tiny", "maze-tiny"]


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimisation (names follow the official pretrain config)."""

    optimizer: Literal["adam_atan2", "adamw", "lion"] = "adam_atan2"
    """Optimizer of the network weights."""
    lr: float = 1e-4
    """Peak learning rate of the network optimizer."""
    lr_min_ratio: float = 1.0
    """Cosine decays to lr * lr_min_ratio at the last step (1.0: constant after warm-up)."""
    lr_warmup_steps: int = 2000
    """Linear warm-up steps (both learning rates)."""
    b1: float = 0.9
    """First-moment decay."""
    b2: float = 0.95
    """Second-moment decay."""
    weight_decay: float = 0.1
    """Decoupled weight decay of all network weights."""
    puzzle_emb_lr: float = 1e-2
    """Peak learning rate of the puzzle-embedding sign-SGD."""
    puzzle_emb_weight_decay: float = 0.1
    """Decoupled weight decay of the puzzle-embedding rows used in a batch."""
    ema: bool = True
    """Keep an EMA of the network weights and evaluate with it."""
    ema_rate: float = 0.999
    """EMA: ema = rate * ema + (1 - rate) * weights, after every step."""
    freeze_weights: bool = False
    """Train only the puzzle embeddings (network weights fixed)."""
    global_batch_size: int = 768
    """Examples per optimizer step, over all devices and hosts."""
    epochs: int = 100000
    """Passes over the training set (sets the step budget and the lr schedule length)."""
    lr_batch_scaling: Literal["none", "sqrt", "linear"] = "none"
    """Scale lr and puzzle_emb_lr by (global_batch_size / lr_reference_batch)^(1/2 or 1)."""
    lr_reference_batch: int = 768
    """Batch size at which lr and puzzle_emb_lr apply unscaled (with lr_batch_scaling)."""

    def __post_init__(self) -> None:
        for name in ("lr", "puzzle_emb_lr", "weight_decay", "puzzle_emb_weight_decay"):
            _at_least(self, name, 0.0)
        _in_unit(self, "lr_min_ratio", upper_open=False)
        for name in ("b1", "b2", "ema_rate"):
            _in_unit(self, name, upper_open=True)
        _at_least(self, "lr_warmup_steps", 0)
        for name in ("global_batch_size", "epochs", "lr_reference_batch"):
            _at_least(self, name, 1)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """When and what to evaluate."""

    eval_interval: int | None = None
    """Epochs between evaluations; must divide optim.epochs (None: only at the end)."""
    min_eval_interval: int = 0
    """Skip evaluations before this many eval intervals have passed."""
    eval_sets: tuple[str, ...] = ("test",)
    """Splits of the data directory to evaluate on."""
    batch_size: int | None = None
    """Global evaluation batch (None: optim.global_batch_size)."""
    evaluators: tuple[Literal["arc"], ...] = ()
    """Extra evaluators (arc: augmentation voting, pass@K, Kaggle submission)."""
    save_outputs: tuple[str, ...] = ()
    """Outputs to save per evaluation (e.g. inputs, labels, logits, q_halt_logits)."""
    average_last_k: int = 1
    """Evaluate the average of the last k saved checkpoints' weights (1: the current ones)."""

    def __post_init__(self) -> None:
        _at_least(self, "eval_interval", 1)
        _at_least(self, "min_eval_interval", 0)
        _at_least(self, "batch_size", 1)
        _at_least(self, "average_last_k", 1)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints (train state + data iterator + configs)."""

    dir: str | None = None
    """Checkpoint directory (None: <run_dir>/checkpoints)."""
    every_n_steps: int | None = None
    """Also save every N steps (None: save after each evaluation and at the end)."""
    keep_last: int = 2
    """Keep the K most recent checkpoints."""
    keep_best_metric: str | None = None
    """Also keep the best checkpoint by this metric (e.g. test/exact_accuracy)."""
    best_mode: Literal["max", "min"] = "max"
    """Whether a larger or smaller keep_best_metric is better."""
    async_save: bool = True
    """Write checkpoints in a background thread."""
    resume: bool = True
    """Resume from the latest checkpoint in dir when there is one."""

    def __post_init__(self) -> None:
        _at_least(self, "every_n_steps", 1)
        _at_least(self, "keep_last", 1)


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking with Aim."""

    track: Annotated[bool, tyro.conf.arg(prefix_name=False)] = True
    """Log to Aim (--no-track disables it)."""
    repo: str = ".aim"
    """Aim repository directory, or aim://host:port of an Aim tracking server (`aim server`)."""
    experiment: str | None = None
    """Aim experiment (None: the preset's name)."""
    run_name: str | None = None
    """Readable run name (None: experiment + time)."""
    tags: tuple[str, ...] = ()
    """Tags added to the Aim run."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Devices and hosts."""

    data: int = -1
    """Size of the data-parallel mesh axis (-1: all devices)."""
    distributed: bool = False
    """Call jax.distributed.initialize (multi-host; cluster auto-detection if no address)."""
    coordinator_address: str | None = None
    """host:port of process 0 (multi-host without auto-detection)."""
    num_processes: int | None = None
    """Number of processes (multi-host without auto-detection)."""
    process_id: int | None = None
    """This process's index (multi-host without auto-detection)."""

    def __post_init__(self) -> None:
        require(self.data == -1 or self.data >= 1, self, "data",
                f"must be -1 or >= 1, got {self.data}")
        _at_least(self, "num_processes", 1)
        _at_least(self, "process_id", 0)
        if self.num_processes is not None and self.process_id is not None:
            require(self.process_id < self.num_processes, self, "process_id",
                    f"{self.process_id} must be < num_processes {self.num_processes}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Training data."""

    data_dir: str = "data/sudoku-extreme-1k-aug-1000"
    """Data set directory (train/ and test/ splits); the generated set is written here."""
    generate: Generated = "none"
    """Generate a small synthetic data set into data_dir first (none: read it as is)."""
    num_train: int = 1000
    """Puzzles to generate for training (with generate)."""
    num_test: int = 200
    """Puzzles to generate for testing (with generate)."""
    min_clues: int = 0
    """Generated Sudoku difficulty: random solution cells are given back to each minimal
    puzzle (~22-26 clues) until it has at least this many clues (0: minimal, hardest;
    higher: easier, e.g. 40 for CPU-sized runs)."""
    num_aug: int | Literal["default", "fresh"] = "default"
    """Augmented copies per training puzzle: K (a fixed pool of K + 1 copies, 0 = originals
    only), "default" (the data set's pool) or "fresh" (new random ones every epoch)."""
    num_workers: int = 0
    """Loader worker processes (0: threads in this process)."""
    seed: int = 0
    """Seed of generation, shuffling and augmentation."""
    allow_mismatch: bool = False
    """Resume even if data_dir's fingerprint differs from the checkpoint's training data
    (a one-line warning instead of an error)."""

    def __post_init__(self) -> None:
        require(0 <= self.min_clues <= 81, self, "min_clues",
                f"must be in 0..81, got {self.min_clues}")
        require(self.generate == "none" or "://" not in self.data_dir, self, "data_dir",
                f"{self.data_dir}: the generated {self.generate} data set is written "
                f"locally (--data.generate {self.generate}, set by the preset); give a "
                f"local directory")
        _at_least(self, "num_train", 1)
        _at_least(self, "num_test", 1)
        _at_least(self, "num_workers", 0)
        if isinstance(self.num_aug, int):
            _at_least(self, "num_aug", 0)


@dataclasses.dataclass(frozen=True)
class CurriculumConfig:
    """Recursion-depth curriculum: (H_cycles, L_cycles) changed in phases over training."""

    phases: tuple[tuple[float, int, int], ...] = ()
    """(start fraction of training, H_cycles, L_cycles) per phase, first at 0.0; empty: off.
    Each phase change recompiles the train step once."""

    def __post_init__(self) -> None:
        try:
            validate_phases(self.phases)
        except ConfigError as e:
            raise ConfigError(e.detail, field=e.field, owner=type(self)) from None


@dataclasses.dataclass(frozen=True)
class HaltingConfig:
    """Training-time halting: annealed exploration and compute-aware halting."""

    exploration_start: float | None = None
    """Exploration probability at step 0, annealed linearly to exploration_end
    (None: model.halt_exploration_prob throughout)."""
    exploration_end: float | None = None
    """Exploration probability at the last step (with exploration_start)."""
    step_penalty: float = 0.0
    """Compute-aware halting: add step_penalty * steps * BCE(q_halt, 1) per row (0: off)."""

    def __post_init__(self) -> None:
        require((self.exploration_start is None) == (self.exploration_end is None), self,
                "exploration_start", "and exploration_end must be given together")
        for name in ("exploration_start", "exploration_end"):
            _in_unit(self, name, upper_open=False)
        _at_least(self, "step_penalty", 0.0)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    curriculum: CurriculumConfig = dataclasses.field(default_factory=CurriculumConfig)
    halting: HaltingConfig = dataclasses.field(default_factory=HaltingConfig)
    seed: int = 0
    """Seed of parameter initialisation and training randomness."""
    run_dir: str = "runs/trm"
    """Directory of this run's outputs (checkpoints, predictions)."""
    max_steps: int | None = None
    """Stop after this many steps (the lr schedule still spans all epochs; None: all)."""

    def __post_init__(self) -> None:
        o, e = self.optim, self.eval
        if self.mesh.data > 0:
            for name, batch in (("optim.global_batch_size", o.global_batch_size),
                                ("eval.batch_size", e.batch_size)):
                require(batch is None or batch % self.mesh.data == 0, self, name,
                        f"{batch} is not divisible by mesh.data {self.mesh.data}")
        if e.eval_interval is not None:
            require(o.epochs % e.eval_interval == 0, self, "eval.eval_interval",
                    f"{e.eval_interval} must divide epochs {o.epochs}")
        require(e.average_last_k <= self.checkpoint.keep_last, self, "eval.average_last_k",
                f"{e.average_last_k} needs checkpoint.keep_last >= it")
        _at_least(self, "max_steps", 1)

    @property
    def checkpoint_dir(self) -> str:
        """Where checkpoints go: checkpoint.dir, else <run_dir>/checkpoints."""
        return self.checkpoint.dir or f"{self.run_dir}/checkpoints"


def _at_least(config: object, name: str, low: int | float) -> None:  # noqa: PYI041
    """`config.name` (None allowed: "not set") must be a number >= low (finite if a float)."""
    value = getattr(config, name)
    require(value is None or (math.isfinite(value) and value >= low), config, name,
            f"must be >= {low}, got {value}")


def _in_unit(config: object, name: str, *, upper_open: bool) -> None:
    """`config.name` (None allowed) must lie in [0, 1) (upper_open) or [0, 1]."""
    value = getattr(config, name)
    ok = value is None or (0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0)
    require(ok, config, name, f"must be in [0, {'1)' if upper_open else '1]'}, got {value}")


def flag_sections() -> dict[type, str]:
    """Each config dataclass of a RunConfig -> its flag prefix ("model.", ...; "" for RunConfig)."""
    hints = typing.get_type_hints(RunConfig)
    return {RunConfig: ""} | {hints[f.name]: f"{f.name}." for f in dataclasses.fields(RunConfig)
                              if dataclasses.is_dataclass(hints[f.name])}


def parse_cli(argv: Sequence[str] | None = None) -> RunConfig:
    """`<preset> [--section.field value ...]` -> RunConfig (argv without the program name).

    Raises ConfigError naming the flag of an invalid value, or the closest presets to an
    unknown one.
    """
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-") and args[0] not in PRESETS:
        close = difflib.get_close_matches(args[0], PRESETS, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ConfigError(f"unknown preset {args[0]!r}: {hint}(presets: {', '.join(PRESETS)})")
    try:
        return tyro.extras.overridable_config_cli(PRESETS, args=args)
    except ConfigError as e:
        raise flag_error(e, flag_sections()) from None



# ---------------------------------------------------------------------------------------------
# Presets: the paper's recipes (README commands of the official code) and tiny CPU runs.

def _paper(name: str, model: ModelConfig, data_dir: str, *, lr: float, puzzle_lr: float,
           wd: float, epochs: int, eval_interval: int,
           evaluators: tuple[Literal["arc"], ...] = ()) -> RunConfig:
    """Official defaults (batch 768, warm-up 2000, constant lr, betas 0.9/0.95, EMA 0.999)."""
    return RunConfig(
        model=model,
        optim=OptimConfig(lr=lr, puzzle_emb_lr=puzzle_lr, weight_decay=wd,
                          puzzle_emb_weight_decay=wd, epochs=epochs, global_batch_size=768,
                          lr_warmup_steps=2000, lr_min_ratio=1.0, ema=True, ema_rate=0.999),
        eval=EvalConfig(eval_interval=eval_interval, evaluators=evaluators),
        checkpoint=CheckpointConfig(keep_best_metric=None),
        tracking=TrackingConfig(experiment=name),
        data=DataConfig(data_dir=data_dir),
        run_dir=f"runs/{name}",
    )


def _paper_model(**overrides: object) -> ModelConfig:
    """Official arch/trm.yaml: hidden 512, 8 heads, expansion 4, 2 layers, ACT 16, bf16."""
    base: dict[str, object] = {
        "hidden_size": 512, "num_heads": 8, "expansion": 4.0, "L_layers": 2, "H_cycles": 3,
        "L_cycles": 6, "puzzle_emb_len": 16, "puzzle_emb_ndim": None, "pos_encodings": "rope",
        "halt_max_steps": 16, "halt_exploration_prob": 0.1, "no_ACT_continue": True,
        "forward_dtype": "bfloat16", "loss_type": "stablemax"}
    return ModelConfig(**{**base, **overrides})  # type: ignore[arg-type]


ARCH_YAML: dict[str, dict[str, object]] = {
    "trm": {}, "trm_singlez": {}, "trm_hier6": {},
    "hrm": {"H_cycles": 2, "L_cycles": 2, "H_layers": 4, "L_layers": 4},
    "transformers_baseline": {"H_cycles": 1, "H_layers": 8, "num_heads": 12},
}
"""What official config/arch/<arch>.yaml sets differently from trm.yaml (hidden 512,
expansion 4, rope, ACT 16, exploration 0.1, bfloat16 are common to all five)."""


def _arch_model(arch: str, **overrides: object) -> ModelConfig:
    """The official config/arch/<arch>.yaml values (plus the data set's fields)."""
    return _paper_model(arch=arch, **{**ARCH_YAML[arch], **overrides})


def _sudoku_extreme(name: str, model: ModelConfig) -> RunConfig:
    """The paper's Sudoku-Extreme recipe: 1k puzzles x 1000 augmentations, lr and puzzle lr
    1e-4, weight decay 1.0, 50k epochs, evaluation every 5k."""
    return _paper(name, model, "data/sudoku-extreme-1k-aug-1000", lr=1e-4, puzzle_lr=1e-4,
                  wd=1.0, epochs=50000, eval_interval=5000)


def _tiny(name: str, model: ModelConfig, generate: Generated, *, num_train: int,
          epochs: int, eval_interval: int) -> RunConfig:
    """A run that learns something on 2 CPU cores in minutes, on generated data."""
    return RunConfig(
        model=model,
        optim=OptimConfig(lr=1e-3, puzzle_emb_lr=1e-2, weight_decay=0.1,
                          puzzle_emb_weight_decay=0.1, lr_warmup_steps=50, epochs=epochs,
                          global_batch_size=64, ema=True, ema_rate=0.99),
        eval=EvalConfig(eval_interval=eval_interval),
        checkpoint=CheckpointConfig(keep_last=2),
        tracking=TrackingConfig(experiment=name),
        data=DataConfig(data_dir=f"datasets/{name}", generate=generate,
                        num_train=num_train, num_test=128),
        run_dir=f"runs/{name}",
    )


_SUDOKU = {"vocab_size": 11, "seq_len": 81, "num_puzzle_identifiers": 1}
_MAZE = {"vocab_size": 6, "seq_len": 900, "num_puzzle_identifiers": 1}
_ARC = {"vocab_size": 12, "seq_len": 900}
_TINY = {"hidden_size": 64, "num_heads": 4, "expansion": 2.0, "L_layers": 2, "H_cycles": 2,
         "L_cycles": 2, "puzzle_emb_len": 1, "halt_max_steps": 4, "forward_dtype": "float32"}

PRESETS: dict[str, tuple[str, RunConfig]] = {
    "sudoku-extreme": (
        "Sudoku-Extreme 1k x 1000 aug: MLP-mixer (mlp_t), no positions, H3 L6, wd 1.0 (87.4%)",
        _sudoku_extreme("sudoku-extreme",
                        _paper_model(**_SUDOKU, mlp_t=True, pos_encodings="none"))),
    "sudoku-extreme-attn": (
        "Sudoku-Extreme with attention + RoPE, H3 L6, wd 1.0 (74.7%)",
        _sudoku_extreme("sudoku-extreme-attn", _paper_model(**_SUDOKU))),
    "maze-hard": (
        "Maze-Hard 30x30: attention, H3 L4, wd 1.0 (85.3%)",
        _paper("maze-hard", _paper_model(**_MAZE, L_cycles=4), "data/maze-30x30-hard-1k",
               lr=1e-4, puzzle_lr=1e-4, wd=1.0, epochs=50000, eval_interval=5000)),
    "arc-agi-1": (
        "ARC-AGI-1 (+concept) 1000 aug: attention, H3 L4, puzzle lr 1e-2, wd 0.1 (44.6% pass@2)",
        _paper("arc-agi-1", _paper_model(**_ARC, num_puzzle_identifiers=1, L_cycles=4),
               "data/arc1concept-aug-1000", lr=1e-4, puzzle_lr=1e-2, wd=0.1,
               epochs=100000, eval_interval=10000, evaluators=("arc",))),
    "arc-agi-2": (
        "ARC-AGI-2 (+concept) 1000 aug: attention, H3 L4, puzzle lr 1e-2, wd 0.1 (7.8% pass@2)",
        _paper("arc-agi-2", _paper_model(**_ARC, num_puzzle_identifiers=1, L_cycles=4),
               "data/arc2concept-aug-1000", lr=1e-4, puzzle_lr=1e-2, wd=0.1,
               epochs=100000, eval_interval=10000, evaluators=("arc",))),
    "sudoku-extreme-hrm": (
        "Sudoku-Extreme with HRM (hrm.yaml: H2 L2, 4+4 layers, attention), TRM's recipe (55.0%)",
        _sudoku_extreme("sudoku-extreme-hrm", _arch_model("hrm", **_SUDOKU))),
    "sudoku-extreme-transformer": (
        "Sudoku-Extreme with the transformer baseline (8 layers, 12 heads), TRM's recipe",
        _sudoku_extreme("sudoku-extreme-transformer",
                        _arch_model("transformers_baseline", **_SUDOKU))),
    "sudoku-extreme-trm-singlez": (
        "Sudoku-Extreme, TRM single-z ablation (trm_singlez.yaml with the mlp_t recipe)",
        _sudoku_extreme("sudoku-extreme-trm-singlez",
                        _arch_model("trm_singlez", **_SUDOKU, mlp_t=True, pos_encodings="none"))),
    "sudoku-extreme-trm-hier6": (
        "Sudoku-Extreme, TRM with six z_L latents (trm_hier6.yaml with the mlp_t recipe)",
        _sudoku_extreme("sudoku-extreme-trm-hier6",
                        _arch_model("trm_hier6", **_SUDOKU, mlp_t=True, pos_encodings="none"))),
    "sudoku-tiny": (
        "CPU smoke run: generated 9x9 sudoku, hidden 64, 2 layers, H2 L2, ACT 4, batch 64",
        _tiny("sudoku-tiny", ModelConfig(**_SUDOKU, **_TINY), "sudoku-tiny", num_train=1000,
              epochs=40, eval_interval=10)),
    "maze-tiny": (
        "CPU smoke run: generated small mazes, hidden 64, 2 layers, H2 L2, ACT 4, batch 64",
        _tiny("maze-tiny", ModelConfig(**{**_MAZE, "seq_len": 100}, **_TINY), "maze-tiny",
              num_train=500, epochs=40, eval_interval=10)),
}
