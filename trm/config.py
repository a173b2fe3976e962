"""Model configuration: a frozen dataclass mirroring the official architecture configs
(config/arch/*.yaml: trm, trm_singlez, trm_hier6, hrm, transformers_baseline)."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Literal

PosEncoding = Literal["rope", "learned", "none"]
ForwardDType = Literal["float32", "bfloat16", "float16"]
LossType = Literal["stablemax", "softmax"]
Arch = Literal["trm", "trm_singlez", "trm_hier6", "hrm", "transformers_baseline"]


_LEGACY_VARIANT = {"trm": "trm", "single_z": "trm_singlez"}


def upgrade_model_fields(fields: dict) -> dict:
    """ModelConfig fields as stored by older versions (checkpoint JSON) in today's names:
    `variant` ("trm" / "single_z") became `arch` ("trm" / "trm_singlez")."""
    fields = dict(fields)
    variant = fields.pop("variant", None)
    if variant is not None and "arch" not in fields:
        fields["arch"] = _LEGACY_VARIANT[variant]
    return fields


class ConfigError(Exception):
    """An invalid configuration value. Deliberately not a ValueError, so that tyro does not
    wrap it in its multi-line help box: the command line reports it as one line.

    `field` (a dotted path inside the dataclass `owner`, when known) lets a command line
    name its own flag instead (`flag_error`); `detail` is the message without the field.
    """

    def __init__(self, detail: str, *, field: str | None = None,
                 owner: type | None = None) -> None:
        super().__init__(f"{field} {detail}" if field else detail)
        self.detail, self.field, self.owner = detail, field, owner


def require(ok: bool, config: object, field: str, detail: str) -> None:
    """Raise ConfigError(`field` `detail`) for `field` of the dataclass `config` unless ok."""
    if not ok:
        raise ConfigError(detail, field=field, owner=type(config))


DATA_SET_FIELDS = ("vocab_size", "seq_len", "num_puzzle_identifiers")
"""ModelConfig fields a data set determines (its metadata); training takes them from there."""


def flag_name(path: str) -> str:
    """The tyro flag of a dotted field path: "model.num_heads" -> "--model.num-heads"."""
    return "--" + path.replace("_", "-")


def flag_error(error: ConfigError, sections: dict[type, str]) -> ConfigError:
    """`error` reworded to name the command-line flag; `sections` maps each nested config
    dataclass to its flag prefix ("" for the top level)."""
    if error.field is None or error.owner not in sections:
        return error
    prefix = sections[error.owner]
    detail = error.detail
    for f in dataclasses.fields(error.owner):  # other fields the detail names, as flags too
        if "_" in f.name:  # snake_case: a field name, not a word of the sentence
            detail = re.sub(rf"(?<![\w.-]){f.name}(?!\w)", flag_name(prefix + f.name), detail)
    return ConfigError(f"{flag_name(prefix + error.field)} {detail}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of one model (names follow the official config; `arch` selects the
    official architecture, fields it does not use are ignored, as the official configs do)."""

    vocab_size: int = 11
    """Number of token ids (0 is PAD)."""
    seq_len: int = 81
    """Tokens per puzzle (without the puzzle-embedding prefix)."""
    num_puzzle_identifiers: int = 1
    """Rows of the puzzle-embedding table (id 0 is the blank puzzle)."""
    puzzle_emb_ndim: int | None = None
    """Width of one puzzle embedding; None means hidden_size, 0 disables it."""
    puzzle_emb_len: int = 16
    """Prefix positions for the puzzle embedding; 0 means ceil(puzzle_emb_ndim / hidden_size)."""
    hidden_size: int = 512
    """Model width D."""
    num_heads: int = 8
    """Attention heads (head dim = hidden_size / num_heads)."""
    expansion: float = 4.0
    """SwiGLU expansion; intermediate = round_up(round(expansion * h * 2/3), 256)."""
    L_layers: int = 2
    """Blocks in the single shared reasoning network (hrm: in the L-level stack)."""
    H_layers: int = 0
    """Blocks in the H-level stack (hrm, transformers_baseline; unused by the trm family)."""
    H_cycles: int = 3
    """Outer cycles per supervision step (all but the last without gradient)."""
    L_cycles: int = 6
    """Latent updates per outer cycle."""
    pos_encodings: PosEncoding = "rope"
    """Positions: rotary (rope), a learned table (learned) or none."""
    mlp_t: bool = False
    """Mix tokens with a SwiGLU along the sequence instead of attention."""
    rms_norm_eps: float = 1e-5
    """Epsilon of the parameter-free RMS norm."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    halt_max_steps: int = 16
    """Supervision steps (ACT steps) per puzzle."""
    halt_exploration_prob: float = 0.1
    """Training: probability that a row gets a random minimum number of steps."""
    no_ACT_continue: bool = True
    """True: halt when q_halt > 0 and skip the Q-continue loss (TRM default). hrm always
    halts on q_halt > q_continue and trains Q-continue, transformers_baseline halts on
    q_halt > q_continue without Q-continue loss: for them this field is ignored."""
    act_enabled: bool = True
    """transformers_baseline: adaptive halting in training (others: always)."""
    act_inference: bool = False
    """transformers_baseline: adaptive halting in evaluation too (others: never)."""
    forward_dtype: ForwardDType = "float32"
    """Activation dtype of the forward pass; weights stay float32."""
    loss_type: LossType = "stablemax"
    """Cross-entropy of the answer: stablemax (official) or softmax."""
    arch: Arch = "trm"
    """Architecture, named as the official config/arch/*.yaml: "trm" (z_H and z_L),
    "trm_singlez" (the paper's single-latent ablation), "trm_hier6" (six z_L latents),
    "hrm" (two stacks, L_cycles x H_cycles, one-step gradient) or "transformers_baseline"
    (one pass of H_layers attention blocks per supervision step)."""
    remat: bool | None = None
    """Recompute each network call in the backward pass instead of storing its activations,
    keeping only its projections' outputs (`trm.models.trm.REMAT_POLICY`; less memory, the
    element-wise work and attention products of the last H cycle run twice; same numbers up
    to float rounding). None: on for the CPU backend, where recomputing is faster than writing and
    re-reading the stacked activations of the loop over L_cycles (README, Performance),
    off elsewhere. trm family only: hrm and the baseline differentiate one or two calls per
    step."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "hidden_size", "num_heads", "L_layers",
                     "H_cycles", "L_cycles", "halt_max_steps", "num_puzzle_identifiers"):
            require(getattr(self, name) >= 1, self, name, f"must be >= 1, got {getattr(self, name)}")
        # the official attention runs at width num_heads * (hidden // num_heads); only the
        # baseline's published config (512 / 12) needs that, elsewhere it is a mistake
        require(self.hidden_size % self.num_heads == 0 or self.arch == "transformers_baseline",
                self, "num_heads",
                f"{self.num_heads} must divide hidden_size {self.hidden_size} (not divisible)")
        require(self.num_heads <= self.hidden_size, self, "num_heads",
                f"{self.num_heads} exceeds hidden_size {self.hidden_size}")
        require(self.puzzle_emb_ndim is None or self.puzzle_emb_ndim >= 0, self,
                "puzzle_emb_ndim", f"must be >= 0, got {self.puzzle_emb_ndim}")
        require(self.puzzle_emb_len >= 0, self, "puzzle_emb_len",
                f"must be >= 0, got {self.puzzle_emb_len}")
        require(self.puzzle_dim <= self.prefix_len * self.hidden_size, self, "puzzle_emb_ndim",
                f"{self.puzzle_dim} does not fit in puzzle_emb_len {self.puzzle_emb_len} "
                f"positions of hidden_size {self.hidden_size} (give puzzle_emb_len >= "
                f"{math.ceil(self.puzzle_dim / self.hidden_size)}, or 0 for that)")
        for name in ("expansion", "rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            require(math.isfinite(value) and value > 0, self, name, f"must be > 0, got {value}")
        require(0.0 <= self.halt_exploration_prob <= 1.0, self, "halt_exploration_prob",
                f"must be in [0, 1], got {self.halt_exploration_prob}")
        require(not (self.pos_encodings == "rope" and self.head_dim % 2), self, "num_heads",
                f"gives an odd head dim {self.head_dim} (hidden_size / num_heads), RoPE needs "
                f"an even one")
        require(self.arch not in ("hrm", "transformers_baseline") or self.H_layers >= 1, self,
                "H_layers", f"must be >= 1 for {self.arch}, got {self.H_layers}")
        require(self.H_layers >= 0, self, "H_layers", f"must be >= 0, got {self.H_layers}")
        require(self.arch != "trm_hier6" or self.L_cycles <= 6, self, "L_cycles",
                f"must be <= 6 for trm_hier6 (six latents), got {self.L_cycles}")
        baseline = self.arch == "transformers_baseline"
        require(not baseline or self.pos_encodings != "none", self, "pos_encodings",
                "must be rope or learned for transformers_baseline")
        require(not (baseline and self.mlp_t), self, "mlp_t",
                "must be off for transformers_baseline (attention blocks only)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def puzzle_dim(self) -> int:
        """Width of the puzzle-embedding table (0 when disabled)."""
        return self.hidden_size if self.puzzle_emb_ndim is None else self.puzzle_emb_ndim

    @property
    def prefix_len(self) -> int:
        """Positions taken by the puzzle embedding in front of the tokens (0 without one);
        hrm and transformers_baseline have no puzzle_emb_len: always ceil(ndim / hidden)."""
        if self.puzzle_dim == 0:
            return 0
        if self.puzzle_emb_len == 0 or self.arch in ("hrm", "transformers_baseline"):
            return math.ceil(self.puzzle_dim / self.hidden_size)
        return self.puzzle_emb_len

    @property
    def total_len(self) -> int:
        """Sequence length inside the network: prefix + tokens."""
        return self.prefix_len + self.seq_len

    @property
    def halts_on_q_continue(self) -> bool:
        """Training halts on q_halt > q_continue (else on q_halt > 0)."""
        return self.arch in ("hrm", "transformers_baseline") or not self.no_ACT_continue

    @property
    def halting_rule(self) -> str:
        """The halting decision, as text: "q_halt > q_continue" or "q_halt > 0"."""
        return "q_halt > q_continue" if self.halts_on_q_continue else "q_halt > 0"

    @property
    def trains_q_continue(self) -> bool:
        """Training computes the Q-continue target (one more inner call) and its loss."""
        if self.arch == "transformers_baseline":  # its loss head never asks for the target
            return False
        return self.arch == "hrm" or not self.no_ACT_continue

    def adaptive_halting(self, train: bool) -> bool:
        """Rows may halt before halt_max_steps: in training (transformers_baseline: if
        act_enabled), and in evaluation only for transformers_baseline with act_inference."""
        if self.halt_max_steps <= 1:
            return False
        if self.arch == "transformers_baseline":
            return self.act_enabled if train else self.act_inference
        return train
