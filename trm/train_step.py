"""The training state and one pure, data-parallel training step.

`TrainState` is a single PyTree (step, model, EMA, optimiser state, ACT carry, base key).
`make_train_step(...)` returns `train_step(state, batch) -> (state, metric_sums)`:

    carry  = model.reset(carry, batch)                 # halted rows take the new rows
    shard_map over the "data" axis:                    # per-device part
        loss   = step_loss(model, carry_shard) / global_batch
        grads  = psum(d loss / d network)              # replicated
        rows'  = d loss / d puzzle rows                # stays sharded with the batch
    puzzle table <- sign_sgd_rows(table, ids, rows')   # on global arrays
    network      <- optimizer.update(grads)            # AdamATan2 / AdamW / Lion
    ema          <- ema_update(ema, network)
    state_finite  = all(isfinite(network, EMA, optimiser moments, puzzle table))

Batches and the carry are sharded on their batch axis, parameters replicated. The random
numbers of a step (halting exploration) are drawn for the global batch from
`fold_in(key, step)`, so results do not depend on the number of devices.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from trm.config import ConfigError
from trm.integrity import all_finite
from trm.loss import Metrics, step_loss
from trm.models import ACTModel, Carry, network_filter
from trm.optim import ema_init, ema_update, sign_sgd_rows

DATA_AXIS = "data"
Batch = dict[str, Int[Array, "..."]]


class TrainState(eqx.Module):
    """Everything a training run needs to continue exactly."""

    step: Int[Array, ""]
    """Optimiser updates applied so far."""
    model: ACTModel
    ema: ACTModel | None
    """EMA of the network leaves (other leaves None); None when EMA is off."""
    opt_state: optax.OptState
    carry: Carry
    key: PRNGKeyArray
    """Base key; step s uses fold_in(key, s)."""


def network_params(model: ACTModel) -> ACTModel:
    """The network leaves of `model` (puzzle table and H_init/L_init replaced by None)."""
    return eqx.filter(model, network_filter(model))


def eval_model(state: TrainState) -> ACTModel:
    """Weights used for evaluation: the EMA network (if any) with the current puzzle table."""
    if state.ema is None:
        return state.model
    _, rest = eqx.partition(state.model, network_filter(state.model))
    return eqx.combine(state.ema, rest)


def init_train_state(model: ACTModel, optimizer: optax.GradientTransformation, global_batch: int,
                     key: PRNGKeyArray, *, ema: bool) -> TrainState:
    params = network_params(model)
    return TrainState(step=jnp.zeros((), jnp.int32), model=model,
                      ema=ema_init(params) if ema else None,
                      opt_state=optimizer.init(params),
                      carry=model.initial_carry(global_batch), key=key)


def make_mesh(num_devices: int | None = None, *, flag: str = "num_devices") -> Mesh:
    """1-D data-parallel mesh over the first `num_devices` devices (all by default; every
    process's devices under multi-host), with automatic (GSPMD) sharding propagation.

    Raises ConfigError naming `flag` unless 1 <= num_devices <= the devices available.
    """
    available = len(jax.devices())
    if num_devices is not None and not 1 <= num_devices <= available:
        raise ConfigError(f"{flag} {num_devices}: {available} device(s) available "
                          f"({jax.devices()[0].platform})")
    devices = jax.devices() if num_devices is None else jax.devices()[:num_devices]
    return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def state_shardings(state: TrainState, mesh: Mesh) -> TrainState:
    """Carry sharded on the batch axis, everything else replicated."""
    replicated = NamedSharding(mesh, P())
    shardings = jax.tree.map(lambda _: replicated, state)
    carry = jax.tree.map(lambda _: batch_sharding(mesh), state.carry)
    return eqx.tree_at(lambda s: s.carry, shardings, carry)


def normalize_metrics(sums: Mapping[str, ArrayLike], global_batch: int) -> dict[str, float]:
    """Official reporting: losses per global batch, other sums per counted (halted) row.

    The per-row metrics (accuracy, exact_accuracy, q_halt_accuracy, steps) are absent on a
    step where no row halted: nothing was measured (the official code reports 0 there).
    """
    count = float(sums["count"])
    return {k: float(v) / (global_batch if k.endswith("loss") else count)
            for k, v in sums.items()
            if k != "count" and (count or k.endswith("loss"))} | {"count": count}


def loss_and_grads(model: ACTModel, carry: Carry, *, scale: float,
                   min_halt_steps: Int[Array, " B"] | None = None, step_penalty: float = 0.0):
    """One train-mode ACT step on a reset carry and the gradients of `scale * total loss`.

    Returns (total, (new_carry, metric sums, outputs), (network grads, puzzle-row grads));
    the network grads are shaped like `network_params(model)`, the row grads [B, pdim] (None
    without puzzle embeddings).
    """
    diff, static = eqx.partition(model, network_filter(model))

    def scaled_loss(diff, rows):
        total, aux = step_loss(eqx.combine(diff, static), carry, train=True, puzzle_rows=rows,
                               min_halt_steps=min_halt_steps, step_penalty=step_penalty)
        return total * scale, (total, aux)

    rows = model.puzzle_rows(carry.puzzle_identifiers)
    (_, (total, aux)), grads = jax.value_and_grad(scaled_loss, argnums=(0, 1), has_aux=True)(
        diff, rows)
    return total, aux, grads


def apply_optimizers(model: ACTModel, opt_state: optax.OptState, grads: ACTModel,
                     row_grads: Float[Array, "B pdim"] | None, ids: Int[Array, " B"], *,
                     optimizer: optax.GradientTransformation, puzzle_lr: ArrayLike,
                     puzzle_weight_decay: float) -> tuple[ACTModel, optax.OptState]:
    """The official update: the network optimiser on the network weights, sign-SGD on the
    puzzle-embedding rows of the (global) batch."""
    updates, opt_state = optimizer.update(grads, opt_state, network_params(model))
    model = eqx.apply_updates(model, updates)
    if row_grads is not None:
        table = sign_sgd_rows(model.puzzle_emb, ids, row_grads, puzzle_lr, puzzle_weight_decay)
        model = eqx.tree_at(lambda m: m.puzzle_emb, model, table)
    return model, opt_state


def make_train_step(*, mesh: Mesh, optimizer: optax.GradientTransformation,
                    lr_schedule: optax.Schedule, puzzle_lr_schedule: optax.Schedule,
                    puzzle_weight_decay: float, ema_rate: float, global_batch: int,
                    exploration_schedule: optax.Schedule | None = None,
                    step_penalty: float = 0.0,
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """Build the pure train step (wrap it with `jit_train_step` to compile it).

    `exploration_schedule(step)` anneals the halting-exploration probability (default: the
    model's fixed `halt_exploration_prob`); `step_penalty` makes halting compute-aware
    (see `trm.loss.loss_head`).
    """

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        model = state.model
        key = jax.random.fold_in(state.key, state.step)
        carry = model.reset(state.carry, batch["inputs"], batch["labels"],
                            batch["puzzle_identifiers"])
        prob = None if exploration_schedule is None else exploration_schedule(state.step)
        min_halt = model.exploration_min_steps(key, global_batch, prob)

        def local_grads(model: ACTModel, carry: Carry, min_halt: Int[Array, " b"]):
            _, (new_carry, metrics, _), (grads, row_grads) = loss_and_grads(
                model, carry, scale=1.0 / global_batch, min_halt_steps=min_halt,
                step_penalty=step_penalty)
            grads = jax.lax.psum(grads, DATA_AXIS)
            return grads, row_grads, new_carry, jax.lax.psum(metrics, DATA_AXIS)

        grads, row_grads, new_carry, metrics = jax.shard_map(
            local_grads, mesh=mesh,
            in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS)),
            out_specs=(P(), P(DATA_AXIS), P(DATA_AXIS), P()),
            check_vma=False,
        )(model, carry, min_halt)

        model, opt_state = apply_optimizers(
            model, state.opt_state, grads, row_grads, carry.puzzle_identifiers,
            optimizer=optimizer, puzzle_lr=puzzle_lr_schedule(state.step),
            puzzle_weight_decay=puzzle_weight_decay)
        ema = None if state.ema is None else ema_update(state.ema, network_params(model),
                                                         ema_rate)
        # one boolean: whether the new state can be saved (the loop stops before saving one
        # that is not); the loss of this step was computed from the previous weights
        metrics = dict(metrics, lr=lr_schedule(state.step),
                       state_finite=all_finite((model, ema, opt_state)))
        if prob is not None:
            metrics["exploration_prob"] = prob
        new_state = TrainState(step=state.step + 1, model=model, ema=ema, opt_state=opt_state,
                               carry=new_carry, key=state.key)
        return new_state, metrics

    return train_step


def jit_train_step(train_step: Callable, state: TrainState, mesh: Mesh) -> Callable:
    """Compile once with the state's shardings, donating the previous state's buffers."""
    state_sharding = state_shardings(state, mesh)
    return jax.jit(train_step, in_shardings=(state_sharding, batch_sharding(mesh)),
                   out_shardings=(state_sharding, NamedSharding(mesh, P())), donate_argnums=0)
