"""Named presets: the paper's recipes (README commands of the official code, official
config/arch/*.yaml values) and tiny CPU runs on generated data. `python train.py <preset>`
picks one (`trm.run_config.parse_cli`)."""

from __future__ import annotations

from typing import Literal

from trm.config import ModelConfig
from trm.run_config import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    Generated,
    OptimConfig,
    RunConfig,
    TrackingConfig,
)


def _paper(name: str, model: ModelConfig, data_dir: str, *, lr: float, puzzle_lr: float,
           wd: float, epochs: int, eval_interval: int,
           evaluators: tuple[Literal["arc"], ...] = ()) -> RunConfig:
    """Official defaults (batch 768, warm-up 2000, constant lr, betas 0.9/0.95, EMA 0.999).
    Checkpoints: the last 2 and the best by the paper's metric (ARC pass@2, else exact
    accuracy): the official code keeps every evaluated one; a run's best need not be its last."""
    return RunConfig(
        model=model,
        optim=OptimConfig(lr=lr, puzzle_emb_lr=puzzle_lr, weight_decay=wd,
                          puzzle_emb_weight_decay=wd, epochs=epochs, global_batch_size=768,
                          lr_warmup_steps=2000, lr_min_ratio=1.0, ema=True, ema_rate=0.999),
        eval=EvalConfig(eval_interval=eval_interval, evaluators=evaluators),
        checkpoint=CheckpointConfig(keep_best_metric="auto"),
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
          epochs: int, eval_interval: int, lr: float, min_clues: int = 0,
          maze_size: int = 10) -> RunConfig:
    """A run that solves generated puzzles on 2 CPU cores in minutes (README, "Tiny presets,
    measured")."""
    return RunConfig(
        model=model,
        optim=OptimConfig(lr=lr, puzzle_emb_lr=1e-2, weight_decay=0.1,
                          puzzle_emb_weight_decay=0.1, lr_warmup_steps=50, epochs=epochs,
                          global_batch_size=64, ema=True, ema_rate=0.99),
        eval=EvalConfig(eval_interval=eval_interval),
        checkpoint=CheckpointConfig(keep_last=2, keep_best_metric="auto"),
        tracking=TrackingConfig(experiment=name),
        data=DataConfig(data_dir=f"datasets/{name}", generate=generate,
                        num_train=num_train, num_test=128, min_clues=min_clues,
                        maze_size=maze_size),
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
        "CPU run: generated 9x9 Sudoku with 40 clues, mlp_t, hidden 64, H2 L2, ACT 4 (~91%)",
        _tiny("sudoku-tiny", ModelConfig(**_SUDOKU, **_TINY, mlp_t=True, pos_encodings="none"),
              "sudoku-tiny", num_train=1000, epochs=40, eval_interval=5, lr=3e-3,
              min_clues=40)),
    "maze-tiny": (
        "CPU run: generated 7x7 mazes, mlp_t, hidden 64, H2 L2, ACT 4, 1000 steps (~74%)",
        _tiny("maze-tiny", ModelConfig(**{**_MAZE, "seq_len": 49}, **_TINY, mlp_t=True,
                                       pos_encodings="none"),
              "maze-tiny", num_train=1000, epochs=64, eval_interval=8, lr=3e-3, maze_size=7)),
}
