"""Replay numbers recorded from the official TRM code and report our error on each quantity.

    python -m trm.parity FILE.npz [FILE.npz ...] [--tolerance 1e-5] [--verbose]

A fixture file holds `config_json`, official `param/<name>` weights, `batch<k>/...` inputs and
the recorded `eval/step<s>/...` and `train/step<s>/...` quantities (see the README).

The recursion is chaotic: a 1-ulp change of one weight moves the latents by ~1e-6 after one
supervision step and by up to ~1e-2 after four (the official code itself, on another machine,
differs from its own recordings that much). So each recorded step is replayed from the
*recorded* latents of the step before (teacher forcing) wherever the file has them: eval step s
starts from the recorded eval step s-1 carry, train step 2 from the recorded step-1 latents
(train and eval step 1 start from the same all-halted carry and weights). Those are the
"replayed" quantities (every eval step, train step 1), held to `--tolerance`; `max_rel_err` is
their maximum. Train steps after the first start from our own optimiser update (and from step 3
on our own latents), which the file does not record: they are "compounded" and are held to
max(tolerance, chaos_factor x our own sensitivity), the sensitivity being how far the same
replay moves when every weight is moved by one ulp.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from trm.config import ModelConfig
from trm.loss import loss_head
from trm.models import ACTModel, Carry
from trm.models.official import (
    config_from_official,
    from_official_state_dict,
    to_official_state_dict,
)
from trm.optim import adam_atan2
from trm.train_step import apply_optimizers, loss_and_grads, network_params

BATCH_KEYS = ("inputs", "labels", "puzzle_identifiers")


@dataclasses.dataclass(frozen=True)
class Fixture:
    config: ModelConfig
    settings: dict
    params: dict[str, np.ndarray]
    records: dict[str, np.ndarray]

    def batch(self, k: int) -> tuple[jax.Array, ...]:
        return tuple(jnp.asarray(self.records[f"batch{k}/{key}"]) for key in BATCH_KEYS)

    def steps(self, mode: str) -> list[int]:
        found = {int(n.split("/")[1][4:]) for n in self.records if n.startswith(f"{mode}/step")}
        return sorted(found)


def load_fixture(path: str) -> Fixture:
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    settings = json.loads(str(arrays.pop("config_json")))
    model_cfg = dict(settings["model"], halt_exploration_prob=0.0)  # recordings use no exploration
    config = config_from_official(model_cfg, settings.get("loss_type", "stablemax"))
    params = {k.removeprefix("param/"): v for k, v in arrays.items() if k.startswith("param/")}
    records = {k: v for k, v in arrays.items() if not k.startswith("param/")}
    return Fixture(config, settings, params, records)


def with_latents(carry: Carry, records: dict[str, np.ndarray], prefix: str) -> Carry:
    """The carry with z_H/z_L taken from the recording under `prefix`."""
    return eqx.tree_at(lambda c: (c.z_H, c.z_L), carry,
                       (jnp.asarray(records[prefix + "z_H"], carry.z_H.dtype),
                        jnp.asarray(records[prefix + "z_L"], carry.z_L.dtype)))


def _step_record(carry: Carry, outputs, total, metrics) -> dict[str, np.ndarray]:
    out = {
        "logits": outputs.logits, "q_halt_logits": outputs.q_halt_logits,
        "q_continue_logits": outputs.q_continue_logits,
        "preds": jnp.argmax(outputs.logits, axis=-1), "z_H": carry.z_H, "z_L": carry.z_L,
        "steps": carry.steps, "halted": carry.halted, "all_halted": carry.halted.all(),
        "loss": total, "current_inputs": carry.inputs, "current_labels": carry.labels,
        "current_puzzle_identifiers": carry.puzzle_identifiers,
    }
    out.update({f"metric_{k}": v for k, v in metrics.items()})
    return {k: np.asarray(v) for k, v in out.items()}


def replay_eval(model: ACTModel, fx: Fixture, teacher_forcing: bool = True) -> dict[str, np.ndarray]:
    """Eval-mode ACT rollout on batch0; step s starts from the recorded step s-1 latents."""
    batch = fx.batch(0)
    carry = model.initial_carry(batch[0].shape[0])
    ours = {}
    step_fn = eqx.filter_jit(lambda m, c: m(c, *batch, train=False))
    for s in fx.steps("eval"):
        if teacher_forcing and s > 1:
            carry = with_latents(carry, fx.records, f"eval/step{s - 1}/")
        carry, outputs = step_fn(model, carry)
        total, metrics = loss_head(carry, outputs, model.config.loss_type)
        ours.update({f"eval/step{s}/{k}": v
                     for k, v in _step_record(carry, outputs, total, metrics).items()})
    return ours


def replay_train(model: ACTModel, fx: Fixture, teacher_forcing: bool = True,
                 ) -> dict[str, np.ndarray]:
    """Train-mode steps on batch0, batch1, ... with the official optimisers after each step."""
    s_cfg = fx.settings
    optimizer = adam_atan2(s_cfg["lr"], b1=0.9, b2=0.95, weight_decay=s_cfg["weight_decay"])
    opt_state = optimizer.init(network_params(model))
    carry = model.initial_carry(fx.batch(0)[0].shape[0])
    grads_fn = eqx.filter_jit(lambda m, c: loss_and_grads(m, c, scale=s_cfg["loss_scale"]))
    ours: dict[str, np.ndarray] = {}
    for s in fx.steps("train"):
        if teacher_forcing and s == 2 and "eval/step1/z_H" in fx.records:
            carry = with_latents(carry, fx.records, "eval/step1/")
        carry = model.reset(carry, *fx.batch(s - 1))
        total, (carry, metrics, outputs), (grads, row_grads) = grads_fn(model, carry)
        prefix = f"train/step{s}/"
        ours.update({prefix + k: v
                     for k, v in _step_record(carry, outputs, total, metrics).items()})
        ours.update({prefix + "grad/" + k: v for k, v in to_official_state_dict(grads).items()})
        if row_grads is not None:
            ours[prefix + "grad/puzzle_emb_rows"] = np.asarray(row_grads)
        model, opt_state = apply_optimizers(
            model, opt_state, grads, row_grads, carry.puzzle_identifiers, optimizer=optimizer,
            puzzle_lr=s_cfg["puzzle_emb_lr"],
            puzzle_weight_decay=s_cfg["puzzle_emb_weight_decay"])
        ours.update({prefix + "param_after/" + k: v
                     for k, v in to_official_state_dict(model).items()})
    return ours


def relative_error(ours: np.ndarray, official: np.ndarray) -> float:
    """max |ours - official| / max |official| (booleans and integers compared as numbers)."""
    a, b = np.asarray(ours, np.float64), np.asarray(official, np.float64)
    if a.shape != b.shape:
        return float("inf")
    scale = np.abs(b).max() if b.size else 0.0
    diff = np.abs(a - b).max() if b.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


def is_compounded(name: str) -> bool:
    """True for train steps after the first: they start from our own optimiser update (and,
    from step 3 on, our own latents), which the recording does not hold."""
    return name.startswith("train/") and int(name.split("/")[1][4:]) >= 2


def replay(fx: Fixture, state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    model = from_official_state_dict(state_dict, fx.config)
    return {**replay_eval(model, fx), **replay_train(model, fx)}


def one_ulp_perturbation(params: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """Every weight moved by one ulp up or down (random signs): the float32 noise floor."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, p in params.items():
        direction = np.where(rng.random(p.shape) < 0.5, -np.inf, np.inf).astype(p.dtype)
        out[name] = np.nextafter(p, direction)
    return out


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    error: float
    sensitivity: float | None  # our own 1-ulp spread; None for replayed quantities

    def allowed(self, tolerance: float, chaos_factor: float) -> float:
        if self.sensitivity is None:
            return tolerance
        return max(tolerance, chaos_factor * self.sensitivity)


def check(fx: Fixture) -> list[Row]:
    """Error of every recorded quantity (and the noise floor of the compounded ones)."""
    ours = replay(fx, fx.params)
    names = sorted(n for n in fx.records if n in ours)
    sensitivity = {}
    if any(is_compounded(n) for n in names):
        perturbed = replay(fx, one_ulp_perturbation(fx.params))
        sensitivity = {n: relative_error(perturbed[n], ours[n]) for n in names
                       if is_compounded(n)}
    return [Row(n, relative_error(ours[n], fx.records[n]), sensitivity.get(n)) for n in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trm.parity", description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", help="fixture .npz files in the official format")
    parser.add_argument("--tolerance", type=float, default=1e-5,
                        help="largest allowed relative error of replayed quantities")
    parser.add_argument("--chaos-factor", type=float, default=30.0,
                        help="compounded quantities may differ by this times our 1-ulp "
                             "sensitivity")
    parser.add_argument("--verbose", action="store_true", help="print every quantity")
    args = parser.parse_args(argv)
    jax.config.update("jax_default_matmul_precision", "highest")

    worst, failures = 0.0, 0
    for path in args.files:
        try:
            fx = load_fixture(path)
        except (OSError, KeyError, ValueError) as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            return 2
        rows = check(fx)
        for row in rows:
            bad = row.error > row.allowed(args.tolerance, args.chaos_factor)
            failures += bad
            if args.verbose or bad:
                extra = ("" if row.sensitivity is None else
                         f"  (compounded; 1-ulp sensitivity {row.sensitivity:.2e})")
                print(f"{'FAIL' if bad else 'ok  '} {path}:{row.name}  {row.error:.3e}{extra}")
        replayed = [r.error for r in rows if r.sensitivity is None]
        compounded = [r.error for r in rows if r.sensitivity is not None]
        file_worst = max(replayed, default=0.0)
        print(f"{path}: {len(replayed)} replayed quantities, max_rel_err={file_worst:.3e}; "
              f"{len(compounded)} compounded, max {max(compounded, default=0.0):.3e}")
        worst = max(worst, file_worst)
    print(f"max_rel_err={worst:.3e}")
    return 1 if worst > args.tolerance or failures else 0


if __name__ == "__main__":
    sys.exit(main())
