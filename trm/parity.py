"""Replay numbers recorded from the official code and report our error on each quantity.

    python -m trm.parity FILE.npz [FILE.npz ...] [--tolerance 1e-5] [--factor 30] [--verbose]

A fixture file holds `config_json`, official `param/<name>` weights, `batch<k>/...` inputs and
the recorded `eval/step<s>/...` and `train/step<s>/...` quantities (see the README); files of
every architecture (trm, trm_hier6, hrm, transformers_baseline) have the same layout.

The recursion is chaotic: a 1-ulp change of one weight moves the latents by ~1e-6 after one
supervision step and by up to ~1e-2 after four. So each recorded step is replayed from
recorded inputs wherever the file has them (teacher forcing): eval step s from the recorded
eval step s-1 latents; train step 2 from the eval step-1 latents (the same carry) and train
step s from the recorded `train/step<s-1>/` latents and `param_after` weights; the optimiser
update of step s from the recorded `train/step<s>/grad/` gradients. (An AdamATan2 update is
lr x an angle: a gradient element within rounding of zero gets an update of either sign, so
`param_after` computed from our own gradients would be as chaotic as the recursion.) Train
steps whose previous weights the file does not hold (trm files record only step 3's) start
from our own optimiser update: they are marked "compounded".

One rule for every quantity, on any CPU: relative error (max |ours - official| / max |official|)
<= max(tolerance, factor x sensitivity), the sensitivity being how far our own replay of the
same quantity moves when every weight (initial and recorded) is moved by one ulp: float32
rounding of that replay on this machine. The exit status is non-zero when any quantity breaks
it; `max_rel_err` is the largest error of the quantities not compounded.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from trm.cli import argument_parser, short_reason
from trm.config import ConfigError, ModelConfig
from trm.loss import loss_head
from trm.models import ACTModel, Carry
from trm.models.official import (
    StateDictError,
    config_from_official,
    from_official_state_dict,
    to_official_state_dict,
)
from trm.optim import adam_atan2
from trm.train_step import apply_optimizers, loss_and_grads, network_params

BATCH_KEYS = ("inputs", "labels", "puzzle_identifiers")
TOLERANCE = 1e-5
SENSITIVITY_FACTOR = 30.0


@dataclasses.dataclass(frozen=True)
class Fixture:
    config: ModelConfig
    settings: dict
    params: dict[str, np.ndarray]
    records: dict[str, np.ndarray]
    carry_keys: tuple[str, ...]

    def batch(self, k: int) -> tuple[jax.Array, ...]:
        return tuple(jnp.asarray(self.records[f"batch{k}/{key}"]) for key in BATCH_KEYS)

    def steps(self, mode: str) -> list[int]:
        found = {int(n.split("/")[1][4:]) for n in self.records if n.startswith(f"{mode}/step")}
        return sorted(found)


def load_fixture(path: str) -> Fixture:
    """A recording of the official code (`tests/fixtures/README.md`). FileNotFoundError, or
    ValueError naming what is wrong when `path` is not such an .npz."""
    if Path(path).is_dir():
        raise ValueError("a directory; give the fixture files (e.g. DIR/*.npz)")
    if not Path(path).is_file():
        raise FileNotFoundError("no such file")
    if not zipfile.is_zipfile(path):
        raise ValueError("not an .npz file (not a zip archive; truncated?)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"a damaged .npz file ({short_reason(e)})") from None
    if "config_json" not in arrays:
        raise ValueError("not a parity fixture: it has no config_json (the recording's "
                         "settings)")
    settings, config = _recording_settings(str(arrays.pop("config_json")))
    params = {k.removeprefix("param/"): v for k, v in arrays.items() if k.startswith("param/")}
    records = {k: v for k, v in arrays.items() if not k.startswith("param/")}
    carry_keys = tuple(settings.get("carry_keys", ("z_H", "z_L")))
    try:
        from_official_state_dict(params, config)  # every parameter there, of its shape
    except StateDictError as e:
        raise ValueError(f"not a complete fixture: {e}") from None
    fixture = Fixture(config, settings, params, records, carry_keys)
    for mode in ("eval", "train"):
        if not fixture.steps(mode):
            raise ValueError(f"not a complete fixture: no {mode} steps recorded "
                             f"({mode}/step<s>/...)")
    for name in (f"batch{k}/{key}" for k in range(len(fixture.steps("train")))
                 for key in BATCH_KEYS):
        if name not in records:
            raise ValueError(f"not a complete fixture: no {name!r} recorded")
    return fixture


_SETTINGS = ("lr", "weight_decay", "loss_scale", "puzzle_emb_lr", "puzzle_emb_weight_decay")
"""The recording's training settings that the train replay uses, besides `model`."""


def _recording_settings(config_json: str) -> tuple[dict, ModelConfig]:
    """(settings, model config) of a fixture's config_json; ValueError naming the fault."""
    try:
        settings = json.loads(config_json)
    except json.JSONDecodeError as e:
        raise ValueError(f"not a parity fixture: its config_json is not JSON ({e})") from None
    if not isinstance(settings, dict) or not isinstance(settings.get("model"), dict):
        # a ValueError, as every other fault of the file (main reports them as one line)
        raise ValueError(  # noqa: TRY004
            "not a parity fixture: its config_json has no `model` mapping")
    absent = [k for k in _SETTINGS if not isinstance(settings.get(k), (int, float))]
    if absent:
        raise ValueError(f"not a parity fixture: its config_json lacks the number(s) "
                         f"{', '.join(absent)}")
    arch = settings.get("arch", "trm")  # files without `arch` are trm
    # recordings use no exploration
    model_cfg = dict(settings["model"], halt_exploration_prob=0.0, name=arch)
    try:
        return settings, config_from_official(model_cfg, settings.get("loss_type", "stablemax"))
    except (ValueError, ConfigError) as e:
        raise ValueError(f"not a parity fixture: {e}") from None


def latent_records(carry: Carry, carry_keys: tuple[str, ...]) -> dict[str, jax.Array]:
    """The carry's latents under the official carry keys (`z_L1` .. `z_L6`: our z_L[:, i])."""
    out = {"z_H": carry.z_H}
    for key in carry_keys:
        if key == "z_L":
            out[key] = carry.z_L
        elif key.startswith("z_L"):
            out[key] = carry.z_L[:, int(key[3:]) - 1]
    return out


def with_latents(carry: Carry, records: dict[str, np.ndarray], prefix: str,
                 carry_keys: tuple[str, ...]) -> Carry:
    """The carry with its latents taken from the recording under `prefix`."""
    z_H = jnp.asarray(records[prefix + "z_H"], carry.z_H.dtype)
    z_L = carry.z_L
    if "z_L" in carry_keys:
        z_L = jnp.asarray(records[prefix + "z_L"], z_L.dtype)
    elif z_L is not None:
        z_L = jnp.stack([jnp.asarray(records[f"{prefix}{k}"], z_L.dtype)
                         for k in carry_keys if k != "z_H"], axis=1)
    return eqx.tree_at(lambda c: (c.z_H, c.z_L), carry, (z_H, z_L),
                       is_leaf=lambda x: x is None)


def _step_record(carry: Carry, outputs, total, metrics, fx: Fixture) -> dict[str, np.ndarray]:
    out = {
        "logits": outputs.logits, "q_halt_logits": outputs.q_halt_logits,
        "q_continue_logits": outputs.q_continue_logits,
        "preds": jnp.argmax(outputs.logits, axis=-1),
        "steps": carry.steps, "halted": carry.halted, "all_halted": carry.halted.all(),
        "loss": total, "current_inputs": carry.inputs, "current_labels": carry.labels,
        "current_puzzle_identifiers": carry.puzzle_identifiers, "actual_steps": carry.steps,
        **latent_records(carry, fx.carry_keys),
    }
    if outputs.target_q_continue is not None:
        out["target_q_continue"] = outputs.target_q_continue
    out.update({f"metric_{k}": v for k, v in metrics.items()})
    return {k: np.asarray(v) for k, v in out.items()}


Weights = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@eqx.filter_jit
def _eval_step(model: ACTModel, carry: Carry, batch: tuple[jax.Array, ...]):
    return model(carry, *batch, train=False)


@eqx.filter_jit
def _loss_and_grads(model: ACTModel, carry: Carry, scale: float):
    return loss_and_grads(model, carry, scale=scale)


def replay_eval(model: ACTModel, fx: Fixture, teacher_forcing: bool = True,
                ) -> dict[str, np.ndarray]:
    """Eval-mode ACT rollout on batch0; step s starts from the recorded step s-1 latents."""
    batch = fx.batch(0)
    carry = model.initial_carry(batch[0].shape[0])
    ours = {}
    for s in fx.steps("eval"):
        if teacher_forcing and s > 1:
            carry = with_latents(carry, fx.records, f"eval/step{s - 1}/", fx.carry_keys)
        carry, outputs = _eval_step(model, carry, batch)
        total, metrics = loss_head(carry, outputs, model.config.loss_type)
        ours.update({f"eval/step{s}/{k}": v
                     for k, v in _step_record(carry, outputs, total, metrics, fx).items()})
    return ours


def recorded_weights(fx: Fixture, step: int) -> dict[str, np.ndarray] | None:
    """The official weights after train step `step` (None when the file does not hold them)."""
    prefix = f"train/step{step}/param_after/"
    found = {n: fx.records[prefix + n] for n in fx.params if prefix + n in fx.records}
    return found if len(found) == len(fx.params) else None


def recorded_grads(fx: Fixture, step: int, model: ACTModel, grads: ACTModel,
                   row_grads: jax.Array | None) -> tuple[ACTModel, jax.Array | None] | None:
    """The official gradients of train step `step`, shaped like ours (`grads`, `row_grads`);
    None when the file does not hold every one of them."""
    prefix = f"train/step{step}/grad/"
    names = list(to_official_state_dict(grads))
    if row_grads is not None:
        names.append("puzzle_emb_rows")
    if any(prefix + n not in fx.records for n in names):
        return None
    state_dict = to_official_state_dict(model)
    state_dict.update({n: fx.records[prefix + n] for n in names if n != "puzzle_emb_rows"})
    official = network_params(from_official_state_dict(state_dict, fx.config))
    rows = None if row_grads is None else jnp.asarray(fx.records[prefix + "puzzle_emb_rows"])
    return official, rows


def replay_train(fx: Fixture, weights: Weights, teacher_forcing: bool = True,
                 ) -> dict[str, np.ndarray]:
    """Train-mode steps on batch0, batch1, ... with the official optimisers after each step.

    With teacher forcing, step s starts from the recorded latents and the recorded weights of
    step s - 1 where the file has them, and its optimiser update is applied to the recorded
    gradients of step s where the file has them (so `param_after` judges the optimiser, and
    `grad/` the gradients, each from recorded inputs). `weights` maps every official state
    dict before it is loaded (the identity, or a one-ulp perturbation).
    """
    s_cfg = fx.settings
    model = from_official_state_dict(weights(fx.params), fx.config)
    optimizer = adam_atan2(s_cfg["lr"], b1=0.9, b2=0.95, weight_decay=s_cfg["weight_decay"])
    opt_state = optimizer.init(network_params(model))
    carry = model.initial_carry(fx.batch(0)[0].shape[0])
    ours: dict[str, np.ndarray] = {}
    for s in fx.steps("train"):
        if teacher_forcing and s > 1:
            latents = "eval/step1/" if s == 2 else f"train/step{s - 1}/"
            if latents + "z_H" in fx.records:
                carry = with_latents(carry, fx.records, latents, fx.carry_keys)
            recorded = recorded_weights(fx, s - 1)
            if recorded is not None:
                model = from_official_state_dict(weights(recorded), fx.config)
        carry = model.reset(carry, *fx.batch(s - 1))
        total, (carry, metrics, outputs), (grads, row_grads) = _loss_and_grads(
            model, carry, s_cfg["loss_scale"])
        prefix = f"train/step{s}/"
        ours.update({prefix + k: v
                     for k, v in _step_record(carry, outputs, total, metrics, fx).items()})
        ours.update({prefix + "grad/" + k: v for k, v in to_official_state_dict(grads).items()})
        if row_grads is not None:
            ours[prefix + "grad/puzzle_emb_rows"] = np.asarray(row_grads)
        official = recorded_grads(fx, s, model, grads, row_grads) if teacher_forcing else None
        if official is not None:
            grads, row_grads = official
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


def is_compounded(fx: Fixture, name: str) -> bool:
    """True for train steps that start from our own optimiser update (the file does not
    record the weights of the step before), and so also from our own latents later on."""
    if not name.startswith("train/"):
        return False
    step = int(name.split("/")[1][4:])
    return step >= 2 and recorded_weights(fx, step - 1) is None


def replay(fx: Fixture, weights: Weights = lambda sd: sd) -> dict[str, np.ndarray]:
    """Every recorded quantity, replayed from the file's inputs with `weights` applied to
    every official state dict loaded."""
    model = from_official_state_dict(weights(fx.params), fx.config)
    return {**replay_eval(model, fx), **replay_train(fx, weights)}


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
    sensitivity: float  # how far our own replay moves when every weight moves by one ulp
    compounded: bool

    def allowed(self, tolerance: float = TOLERANCE, factor: float = SENSITIVITY_FACTOR) -> float:
        """The one rule: max(tolerance, factor x the quantity's one-ulp sensitivity)."""
        return max(tolerance, factor * self.sensitivity)


def check(fx: Fixture) -> list[Row]:
    """Error and one-ulp sensitivity of every recorded quantity."""
    ours = replay(fx)
    names = sorted(n for n in fx.records if n in ours)
    perturbed = replay(fx, one_ulp_perturbation)
    return [Row(n, relative_error(ours[n], fx.records[n]), relative_error(perturbed[n], ours[n]),
                is_compounded(fx, n)) for n in names]


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(prog="python -m trm.parity", description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", help="fixture .npz files in the official format")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help="every quantity may differ by this much (relative) ...")
    parser.add_argument("--factor", type=float, default=SENSITIVITY_FACTOR,
                        help="... or by this times its own one-ulp sensitivity, if larger")
    parser.add_argument("--verbose", action="store_true", help="print every quantity")
    args = parser.parse_args(argv)
    if not (args.tolerance > 0 and args.factor >= 0):
        print(f"error: need --tolerance > 0 and --factor >= 0, got {args.tolerance:g} and "
              f"{args.factor:g}", file=sys.stderr)
        return 2
    jax.config.update("jax_default_matmul_precision", "highest")
    fixtures = {}
    for path in args.files:  # every file read before the first replay
        try:
            fixtures[path] = load_fixture(path)
        except (OSError, ValueError) as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            return 2

    worst, failures = 0.0, 0
    for path, fx in fixtures.items():
        try:
            rows = check(fx)
        except KeyError as e:
            print(f"error: {path}: not a complete fixture: no {e} recorded", file=sys.stderr)
            return 2
        for row in rows:
            allowed = row.allowed(args.tolerance, args.factor)
            bad = row.error > allowed
            failures += bad
            if args.verbose or bad:
                extra = "  compounded" if row.compounded else ""
                print(f"{'FAIL' if bad else 'ok  '} {path}:{row.name}  {row.error:.3e} "
                      f"(allowed {allowed:.2e}, 1-ulp sensitivity {row.sensitivity:.2e}){extra}")
        replayed = [r.error for r in rows if not r.compounded]
        compounded = [r.error for r in rows if r.compounded]
        ratio = max(r.error / r.allowed(args.tolerance, args.factor) for r in rows)
        file_worst = max(replayed, default=0.0)
        print(f"{path}: {len(replayed)} replayed quantities, max_rel_err={file_worst:.3e}; "
              f"{len(compounded)} compounded, max {max(compounded, default=0.0):.3e}; "
              f"worst error / allowed {ratio:.2f}")
        worst = max(worst, file_worst)
    print(f"max_rel_err={worst:.3e}  rule: error <= max({args.tolerance:g}, "
          f"{args.factor:g} x one-ulp sensitivity); {failures} quantities break it")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
