"""Run configuration: frozen, tyro-friendly dataclasses and the CLI parser.

`python train.py <preset> --model.hidden-size 256 --optim.lr 3e-4 --no-track`: the first
argument picks a preset from `trm.presets.PRESETS`, flags override its fields (`parse_cli`).
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

from data.common import MAZE_SIZES
from data.store import SPLITS
from trm.config import DATA_SET_FIELDS, ConfigError, ModelConfig, flag_error, flag_name, require
from trm.curriculum import phase_config, validate_phases

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
    average_last_k: int = 1
    """Evaluate the average of the last k saved checkpoints' weights (1: the current ones)."""

    def __post_init__(self) -> None:
        _at_least(self, "eval_interval", 1)
        _at_least(self, "min_eval_interval", 0)
        _at_least(self, "batch_size", 1)
        _at_least(self, "average_last_k", 1)
        unknown = [s for s in self.eval_sets if s not in SPLITS]
        require(not unknown, self, "eval_sets",
                f"{' '.join(unknown)}: not a split of a data set ({', '.join(SPLITS)})")


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
    """Also keep the best checkpoint by this metric, <eval set>/<metric> (e.g.
    test/exact_accuracy); "auto" (the presets): the paper's metric, pass@2 with the ARC
    evaluator, else exact_accuracy, of the test set (else the first evaluated one); none
    when no set is evaluated."""
    best_mode: Literal["max", "min"] = "max"
    """Whether a larger or smaller keep_best_metric is better."""
    async_save: bool = True
    """Write checkpoints in a background thread."""
    resume: bool = True
    """Resume from the latest checkpoint in dir when there is one (--checkpoint.no-resume: a
    fresh run, refused when dir holds checkpoints)."""

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
    join_timeout: int = 300
    """Seconds a process waits for all processes to join (multi-host) before it stops with
    one error line."""
    cpu_devices: int = 0
    """At most this many XLA devices to split this host's CPU into (the largest count that
    divides the batches; 0: up to one per core, or --mesh.data when given; 1: one device).
    Ignored once JAX has started, and when XLA_FLAGS sets
    --xla_force_host_platform_device_count."""

    def __post_init__(self) -> None:
        require(self.data == -1 or self.data >= 1, self, "data",
                f"must be -1 or >= 1, got {self.data}")
        _at_least(self, "num_processes", 1)
        _at_least(self, "cpu_devices", 0)
        _at_least(self, "process_id", 0)
        _at_least(self, "join_timeout", 1)
        if self.num_processes is not None and self.process_id is not None:
            require(self.process_id < self.num_processes, self, "process_id",
                    f"{self.process_id} must be < num_processes {self.num_processes}")
        for name in ("coordinator_address", "num_processes", "process_id"):
            require(self.distributed or getattr(self, name) is None, self, name,
                    "needs --mesh.distributed (a multi-host run)")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Training data."""

    data_dir: str = "data/sudoku-extreme-1k-aug-1000"
    """Built data set directory (metadata.json and its splits: train/ and test/, or arc/ for ARC
    sets); the generated set is written here."""
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
    maze_size: int = 10
    """Generated maze side in cells (seq_len maze_size ** 2); S and G are at least
    round(111 * maze_size ** 2 / 900) moves apart (Maze-Hard's "longer than 110" at 30x30,
    scaled by area)."""
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
        low, high = MAZE_SIZES
        require(low <= self.maze_size <= high, self, "maze_size",
                f"must be in {low}..{high}, got {self.maze_size}")
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
    load_checkpoint: str | None = None
    """Start a new run from these weights (official pretrain.py's load_checkpoint): a train.py
    checkpoint directory (its EMA weights when it has them; the newest usable step, or a
    step's own directory) or official weights (.npz, step_N, .pt). A puzzle embedding table
    of another size starts from the mean of its rows (as official); optimiser, EMA and step
    start fresh. Not used when the run resumes from its own checkpoints."""
    run_dir: str = "runs/trm"
    """Directory of this run's outputs (checkpoints, predictions)."""
    max_steps: int | None = None
    """Stop after this many steps (the lr schedule still spans all epochs; None: all)."""

    @property
    def eval_batch_size(self) -> int:
        """Global evaluation batch: eval.batch_size, else optim.global_batch_size."""
        return self.eval.batch_size or self.optim.global_batch_size

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
                f"{e.average_last_k} needs --checkpoint.keep-last >= {e.average_last_k}")
        best = self.checkpoint.keep_best_metric
        named = best in (None, "auto") or best.partition("/")[0] in e.eval_sets and "/" in best
        require(named, self, "checkpoint.keep_best_metric", f"{best} is not <eval set>/<metric> "
                f"of an evaluated set ({', '.join(e.eval_sets)}), e.g. "
                f"{(e.eval_sets or ('test',))[0]}/exact_accuracy")
        _at_least(self, "max_steps", 1)
        require(self.run_dir.strip() != "", self, "run_dir",
                f"must name a directory, got {self.run_dir!r}")
        for phase in self.curriculum.phases:  # each phase must be a valid model config too
            try:
                phase_config(self.model, phase)
            except ConfigError as error:
                raise ConfigError(f"phase {phase}: its {error.field} {error.detail}",
                                  field="curriculum.phases", owner=type(self)) from None

    @property
    def best_metric(self) -> str | None:
        """checkpoint.keep_best_metric with "auto" resolved (see CheckpointConfig)."""
        e, best = self.eval, self.checkpoint.keep_best_metric
        if best != "auto":
            return best
        if not e.eval_sets:
            return None
        split = "test" if "test" in e.eval_sets else e.eval_sets[0]
        return f"{split}/{'pass@2' if 'arc' in e.evaluators else 'exact_accuracy'}"

    @property
    def checkpoint_dir(self) -> str:
        """Where checkpoints go: checkpoint.dir, else <run_dir>/checkpoints."""
        return self.checkpoint.dir or f"{self.run_dir}/checkpoints"


def _at_least(config: object, name: str, low: int | float) -> None:  # noqa: PYI041
    """`config.name` (None allowed: "not set") must be a number >= low (finite if a float)."""
    value = getattr(config, name)
    finite = value is None or math.isfinite(value)
    require(value is None or (finite and value >= low), config, name,
            f"must be {'' if finite else 'a finite number '}>= {low}, got {value}")


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
    """`<preset> [--section.field value ...]` -> RunConfig (argv without the program name;
    presets in `trm.presets`).

    Raises ConfigError naming the flag of an invalid value, or the closest presets to an
    unknown one.
    """
    import sys

    from trm.presets import PRESETS

    args = list(sys.argv[1:] if argv is None else argv)
    later = [a for a in args[1:] if a in PRESETS]
    if args and args[0].startswith("-") and later and not {"-h", "--help"} & set(args):
        raise ConfigError(f"the preset comes first: train.py {later[0]} [flags]")
    if args and not args[0].startswith("-") and args[0] not in PRESETS:
        close = difflib.get_close_matches(args[0], PRESETS, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ConfigError(f"unknown preset {args[0]!r}; {hint}presets: {', '.join(PRESETS)}")
    try:
        cfg = tyro.extras.overridable_config_cli(PRESETS, args=args)
    except ConfigError as e:
        raise flag_error(e, flag_sections()) from None
    given = {a.split("=", 1)[0].replace("_", "-") for a in args if a.startswith("--")}
    for name in DATA_SET_FIELDS:  # given as a flag, in any spelling, with any value
        if flag_name("model." + name) in given:
            raise ConfigError(f"{flag_name('model.' + name)} is the data set's: training reads "
                              "it from the data set's metadata (build a data set with other "
                              "sizes instead)")
    return cfg
