"""Building blocks shared by every architecture, on a batch (`[B, L, D]`), weights float32.

The network runs on the batch directly (no `jax.vmap` over examples), so every matmul is one
XLA dot over all rows and the weight gradients are single contractions over the batch.

Every layer casts its float32 weights to the dtype of its input, so the forward dtype is chosen
once, by the dtype of the embeddings (see `trm.models.act`).
"""

from __future__ import annotations

import functools
import math
import operator

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from trm.config import ModelConfig

_TRUNC_BOUND = 2.0


def truncated_normal_std_correction(bound: float = _TRUNC_BOUND) -> float:
    """Std of a standard normal truncated to [-bound, bound]."""
    z = math.erf(bound / math.sqrt(2.0))
    pdf = math.exp(-0.5 * bound**2) / math.sqrt(2.0 * math.pi)
    return math.sqrt(1.0 - 2.0 * bound * pdf / z)


def trunc_normal(key: PRNGKeyArray, shape: tuple[int, ...], std: float) -> Float[Array, ...]:
    """Truncated normal (cut at +-2 std) whose std is exactly `std` (JAX/Flax convention)."""
    if std == 0.0:
        return jnp.zeros(shape, jnp.float32)
    unit = jax.random.truncated_normal(key, -_TRUNC_BOUND, _TRUNC_BOUND, shape, jnp.float32)
    return unit * (std / truncated_normal_std_correction())


def round_up(value: int, multiple: int) -> int:
    return -(value // -multiple) * multiple


def swiglu_intermediate_size(hidden_size: int, expansion: float) -> int:
    """Official rule: round(expansion * h * 2/3) rounded up to a multiple of 256."""
    return round_up(round(expansion * hidden_size * 2 / 3), 256)


def _f32_accumulated(subscripts: str, a: Array, b: Array) -> Array:
    return jnp.einsum(subscripts, a, b, preferred_element_type=jnp.float32).astype(a.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _low_precision_einsum(subscripts: str, a: Array, b: Array) -> Array:
    return _f32_accumulated(subscripts, a, b)


def _low_precision_einsum_fwd(subscripts: str, a: Array, b: Array):
    return _f32_accumulated(subscripts, a, b), (a, b)


def _low_precision_einsum_bwd(subscripts: str, residuals: tuple[Array, Array], ct: Array):
    """Both gradient contractions with operands in the forward dtype (the cotangent stays
    bfloat16, as in a PyTorch bfloat16 backward) and float32 accumulation."""
    a, b = residuals
    inputs, out = subscripts.split("->")
    sub_a, sub_b = inputs.split(",")
    ct = ct.astype(a.dtype)
    return (_f32_accumulated(f"{out},{sub_b}->{sub_a}", ct, b),
            _f32_accumulated(f"{sub_a},{out}->{sub_b}", a, ct))


_low_precision_einsum.defvjp(_low_precision_einsum_fwd, _low_precision_einsum_bwd)


def einsum(subscripts: str, a: Array, b: Array) -> Array:
    """`jnp.einsum` of two operands of one dtype, accumulated in float32, result in their dtype
    (the numbers of a bfloat16 matmul whose products are summed in float32, as cuBLAS and
    oneDNN do). `subscripts` is explicit ("ab,bc->ac", "...k,kn->...n"), every index of an
    operand in the other operand or the output.

    Spelled with `preferred_element_type=float32` because XLA:CPU runs that form of a bfloat16
    dot in YNNPACK (AMX / AVX512-BF16), while a bfloat16-in, bfloat16-out dot is upcast to a
    float32 matmul. Below float32 the gradient contractions are written the same way (JAX's own
    transpose would multiply a float32 cotangent by a bfloat16 operand: a float32 matmul);
    their values are the same, products of bfloat16 numbers being exact in float32.
    """
    if a.dtype == jnp.float32:
        return _f32_accumulated(subscripts, a, b)
    return _low_precision_einsum(subscripts, a, b)


class Linear(eqx.Module):
    """y = x W^T (+ b) over the last axis of x; W is [out, in] (PyTorch layout), LeCun
    truncated-normal init."""

    weight: Float[Array, "out in"]
    bias: Float[Array, " out"] | None

    def __init__(self, in_features: int, out_features: int, *, bias: bool = False,
                 key: PRNGKeyArray):
        self.weight = trunc_normal(key, (out_features, in_features), 1.0 / math.sqrt(in_features))
        self.bias = jnp.zeros((out_features,), jnp.float32) if bias else None

    def __call__(self, x: Float[Array, "*batch in"]) -> Float[Array, "*batch out"]:
        y = einsum("...i,oi->...o", x, self.weight.astype(x.dtype))
        if self.bias is not None:
            y = y + self.bias.astype(x.dtype).reshape((1,) * (y.ndim - 1) + (-1,))
        return y


class Embedding(eqx.Module):
    """Lookup table [num, dim] with truncated-normal init of the given std."""

    weight: Float[Array, "num dim"]

    def __init__(self, num: int, dim: int, *, std: float, key: PRNGKeyArray):
        self.weight = trunc_normal(key, (num, dim), std)

    def __call__(self, ids: Array, dtype: jnp.dtype) -> Float[Array, "... dim"]:
        return self.weight.astype(dtype)[ids]


def rms_norm(x: Float[Array, "*batch dim"], eps: float) -> Float[Array, "*batch dim"]:
    """Parameter-free RMS norm, computed in float32 and cast back."""
    x32 = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    return (x32 * jax.lax.rsqrt(variance + eps)).astype(x.dtype)


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[
        Float[Array, "seq head_dim"], Float[Array, "seq head_dim"]]:
    """cos/sin tables for RoPE with the rotate-half layout (frequencies repeated twice)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = jnp.outer(jnp.arange(seq_len, dtype=jnp.float32), inv_freq)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


Rope = tuple[Float[Array, "L hd"], Float[Array, "L hd"]] | None


def rotate_half(x: Float[Array, "*batch d"]) -> Float[Array, "*batch d"]:
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: Float[Array, "B L heads head_dim"], cos: Float[Array, "L head_dim"],
               sin: Float[Array, "L head_dim"]) -> Float[Array, "B L heads head_dim"]:
    """Rotate queries or keys by position (computed in the tables' float32, cast back)."""
    x32 = x.astype(cos.dtype)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return (x32 * cos + rotate_half(x32) * sin).astype(x.dtype)


def attention(q: Float[Array, "B L heads hd"], k: Float[Array, "B L heads hd"],
              v: Float[Array, "B L heads hd"]) -> Float[Array, "B L heads hd"]:
    """Non-causal scaled dot-product attention: scores and softmax in float32, both matmuls with
    operands in the input dtype and float32 accumulation (`jax.nn.dot_product_attention`'s
    XLA recipe). The matmuls run heads-major ([B, heads, L, hd], batch dimensions leading),
    which XLA:CPU runs ~2x faster than with the heads axis in the middle."""
    q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))  # heads-major [B, heads, L, hd]
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(scores * (1.0 / math.sqrt(q.shape[-1])), axis=-1).astype(q.dtype)
    return jnp.swapaxes(einsum("bhqk,bhkd->bhqd", probs, v), 1, 2)


class Attention(eqx.Module):
    """Non-causal multi-head self-attention, fused qkv projection, no biases.

    Heads have width hidden_size // num_heads, so the attention runs at width
    num_heads * head_dim, which is below hidden_size when num_heads does not divide it
    (official layers.py; the transformer baseline's 512 / 12).
    """

    qkv_proj: Linear
    o_proj: Linear
    num_heads: int = eqx.field(static=True)

    def __init__(self, hidden_size: int, num_heads: int, *, key: PRNGKeyArray):
        k_qkv, k_o = jax.random.split(key)
        width = num_heads * (hidden_size // num_heads)
        self.qkv_proj = Linear(hidden_size, 3 * width, key=k_qkv)
        self.o_proj = Linear(width, hidden_size, key=k_o)
        self.num_heads = num_heads

    def __call__(self, x: Float[Array, "B L D"], rope: Rope) -> Float[Array, "B L D"]:
        batch, seq_len, _ = x.shape
        width = self.o_proj.weight.shape[1]
        qkv = self.qkv_proj(x).reshape(batch, seq_len, 3 * self.num_heads,
                                       width // self.num_heads)
        q, k, v = jnp.split(qkv, 3, axis=2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return self.o_proj(attention(q, k, v).reshape(batch, seq_len, width))


def _silu_gate(gate_up: Array) -> Array:
    gate, up = jnp.split(gate_up.astype(jnp.float32), 2, axis=-1)
    return (jax.nn.silu(gate) * up).astype(gate_up.dtype)


_low_precision_silu_gate = jax.custom_vjp(_silu_gate)


def _low_precision_silu_gate_fwd(gate_up: Array) -> tuple[Array, Array]:
    return _silu_gate(gate_up), gate_up


def _low_precision_silu_gate_bwd(gate_up: Array, ct: Array) -> tuple[Array]:
    """d/d[gate | up] in float32, written straight into one array of the forward dtype: the
    two halves are picked by a select over a [..., 2, inter] view (JAX's own gradient
    concatenates float32 halves, then rounds: two more passes over the widest activation)."""
    halves = gate_up.reshape(*gate_up.shape[:-1], 2, -1).astype(jnp.float32)
    gate, up = halves[..., :1, :], halves[..., 1:, :]
    ct = ct.astype(jnp.float32)[..., None, :]
    sig = jax.nn.sigmoid(gate)
    d_gate = ct * up * sig * (1 + gate * (1 - sig))
    d_up = ct * gate * sig
    is_gate = jax.lax.broadcasted_iota(jnp.int32, halves.shape, halves.ndim - 2) == 0
    return (jnp.where(is_gate, d_gate, d_up).astype(gate_up.dtype).reshape(gate_up.shape),)


_low_precision_silu_gate.defvjp(_low_precision_silu_gate_fwd, _low_precision_silu_gate_bwd)


def gated_silu(gate_up: Float[Array, "*batch two_inter"]) -> Float[Array, "*batch inter"]:
    """SwiGLU's activation silu(gate) * up of gate_up = [gate | up] (official layers.py
    splits the fused gate_up projection in two halves), in float32, rounded once to gate_up's
    dtype (XLA:CPU would round a bfloat16 chain after every element-wise op).

    Below float32 the gradient is a `custom_vjp` with the same float32 values, rounded once;
    in float32 JAX's own gradient is kept (XLA:CPU fuses the hand-written one into the weight
    gradient's transpose, far slower there).
    """
    if gate_up.dtype == jnp.float32:
        return _silu_gate(gate_up)
    return _low_precision_silu_gate(gate_up)


class SwiGLU(eqx.Module):
    """down(silu(gate) * up) with a fused gate_up projection [h -> 2 * inter]."""

    gate_up_proj: Linear
    down_proj: Linear

    def __init__(self, hidden_size: int, expansion: float, *, key: PRNGKeyArray):
        inter = swiglu_intermediate_size(hidden_size, expansion)
        k_gu, k_d = jax.random.split(key)
        self.gate_up_proj = Linear(hidden_size, 2 * inter, key=k_gu)
        self.down_proj = Linear(inter, hidden_size, key=k_d)

    def __call__(self, x: Float[Array, "*batch h"]) -> Float[Array, "*batch h"]:
        return self.down_proj(gated_silu(self.gate_up_proj(x)))


class Block(eqx.Module):
    """Post-norm block: x = rms(x + mix(x)); x = rms(x + SwiGLU(x))."""

    mixer: Attention | SwiGLU
    mlp: SwiGLU
    eps: float = eqx.field(static=True)

    def __init__(self, config: ModelConfig, *, key: PRNGKeyArray):
        k_mix, k_mlp = jax.random.split(key)
        if config.mlp_t:
            self.mixer = SwiGLU(config.total_len, config.expansion, key=k_mix)
        else:
            self.mixer = Attention(config.hidden_size, config.num_heads, key=k_mix)
        self.mlp = SwiGLU(config.hidden_size, config.expansion, key=k_mlp)
        self.eps = config.rms_norm_eps

    def __call__(self, x: Float[Array, "B L D"], rope: Rope) -> Float[Array, "B L D"]:
        if isinstance(self.mixer, Attention):
            x = rms_norm(x + self.mixer(x, rope), self.eps)
        else:  # mlp_t: SwiGLU along the sequence axis, normalised over it (on x^T, as the
            # official code: contracting over L in place makes XLA:CPU emit transposed-operand
            # bfloat16 dots that its Eigen fallback cannot run)
            xt = jnp.swapaxes(x, -1, -2)
            x = jnp.swapaxes(rms_norm(xt + self.mixer(xt), self.eps), -1, -2)
        return rms_norm(x + self.mlp(x), self.eps)


class ReasoningNet(eqx.Module):
    """A stack of blocks with an input injection: net(h, inj) = blocks(h + inj).

    The blocks' weights are stacked ([num_layers, ...] leaves) and applied in an unrolled
    loop: a scan would stack every layer's activations into [num_layers, ...] buffers for the
    backward pass (copies and converts that cost more than the layers' own element-wise work).
    """

    blocks: Block  # every array leaf has a leading [num_layers] axis

    def __init__(self, config: ModelConfig, num_layers: int, *, key: PRNGKeyArray):
        keys = jax.random.split(key, num_layers)
        self.blocks = eqx.filter_vmap(lambda k: Block(config, key=k))(keys)

    def __call__(self, h: Float[Array, "B L D"], injection: Float[Array, "B L D"] | None,
                 rope: Rope) -> Float[Array, "B L D"]:
        if injection is not None:
            h = h + injection
        params, static = eqx.partition(self.blocks, eqx.is_array)
        for i in range(self.num_layers):
            h = eqx.combine(jax.tree.map(operator.itemgetter(i), params), static)(h, rope)
        return h

    @property
    def num_layers(self) -> int:
        return jax.tree.leaves(self.blocks)[0].shape[0]
