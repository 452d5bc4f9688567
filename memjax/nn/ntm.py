"""The Neural Turing Machine as a Flax NNX recurrent cell.

`NTMCell` owns the controller, the projections to and from the memory
interface and the learned initial state; the memory arithmetic is the pure
layer's: `addressing.ntm_weights` (eqs. 5-9), `access.read` (eq. 2) and
`access.write` (eqs. 3-4).

Each step, all heads address the previous memory M_{t-1}: the read heads
read it and the write heads then erase/add into it, giving M_t (the order of
the paper's figure 2 and of most public NTMs). The read vectors feed the
output of this step and the controller input of the next.

Shape legend: B batch, I input features, O output features, C controller
units, N memory slots, W word size, R read heads, H write heads, S shift-kernel
size (2 x shift_range + 1), T time.

References:
  Graves, Wayne, Danihelka. Neural Turing Machines. arXiv:1410.5401, 2014.
  Collier, Beel. Implementing Neural Turing Machines. ICANN 2018
  (arXiv:1807.08518): constant memory initialisation converges fastest.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from memjax import _checks
from memjax import access
from memjax import addressing
from memjax.nn import _batching
from memjax.nn import controllers

MEMORY_INITS = ("constant", "learned", "random")
# The constant of the `constant` memory initialisation (Collier & Beel 2018).
CONSTANT_MEMORY_VALUE = 1e-6


class NTMState(NamedTuple):
  """The recurrent state of an `NTMCell`.

  The memory is stored transposed, word-major ([B, W, N]: row w holds feature
  w of every slot), because XLA:CPU vectorises the step's element-wise work
  along the minor axis, and N (128 in the NTM paper) fills vector registers
  where W (20) does not: NTM training on copy runs 1.07-1.15x faster than
  with [B, N, W] (batch 16, two CPU devices, interleaved runs in one
  process). The property `memory` gives the usual [B, N, W] view.

  Attributes:
    controller: the controller's state (`LSTMState` or `()`).
    memory_t: [B, W, N] memory matrix, transposed.
    read_weights: [B, R, N] read weightings of the last step.
    write_weights: [B, H, N] write weightings of the last step.
    read_vectors: [B, R, W] read vectors of the last step.
  """
  controller: Any
  memory_t: jax.Array
  read_weights: jax.Array
  write_weights: jax.Array
  read_vectors: jax.Array

  @property
  def memory(self) -> jax.Array:
    """[B, N, W] the memory matrix, one row per slot (a transposed copy of `memory_t`)."""
    return jnp.swapaxes(self.memory_t, -1, -2)


def _batched(fn, *in_axes):
  """vmap over the head axis, then the batch axis."""
  return jax.vmap(jax.vmap(fn, in_axes=in_axes), in_axes=tuple(0 for _ in in_axes))


def validate_memory_options(memory_size: int, word_size: int, num_read_heads: int,
                            num_write_heads: int, controller_size: int, memory_init: str,
                            controller: str, shift_range: int | None = None) -> None:
  """Raises ValueError naming the first bad option (shared with the configs)."""
  for name, value, low in (("memory_size", memory_size, 1), ("word_size", word_size, 1),
                           ("num_read_heads", num_read_heads, 1),
                           ("num_write_heads", num_write_heads, 1),
                           ("controller_size", controller_size, 1)):
    _checks.integer(value, name, low)
  if memory_init not in MEMORY_INITS:
    raise ValueError(f"memory_init must be one of {MEMORY_INITS}; got {memory_init!r}")
  if controller not in controllers.CONTROLLERS:
    raise ValueError(f"controller must be one of {controllers.CONTROLLERS}; got {controller!r}")
  if shift_range is not None:
    shift_range = _checks.integer(shift_range, "shift_range", 0)
    if 2 * shift_range + 1 > memory_size:
      raise ValueError(f"shift_range {shift_range} allows {2 * shift_range + 1} shifts, more "
                       f"than the memory_size N={memory_size} slots")


def initial_memory(cell, batch: tuple[int, ...], rngs=None) -> jax.Array:
  """The initial [N, W] memory of an NTM or DNC cell (`cell.memory_init`), or [*batch, N, W].

  'constant': every entry `CONSTANT_MEMORY_VALUE`; 'learned': the cell's
  `initial_memory` parameter; 'random': 0.5 x a normal truncated to [-2, 2],
  drawn per sequence. `rngs` ('random' only) is an `nnx.Rngs` (its `carry`
  stream if it has one, else `params`), an `nnx.RngStream`, or a PRNG key
  array of shape `batch` (typed keys, or raw uint32 key data with one more
  axis), one key per sequence.
  """
  n, w = cell.memory_size, cell.word_size
  if cell.memory_init == "constant":
    return jnp.full((n, w), CONSTANT_MEMORY_VALUE, jnp.float32)
  if cell.memory_init == "learned":
    return cell.initial_memory[...]
  if rngs is None:
    raise ValueError("memory_init='random' needs `rngs` in initialize_carry")
  draw = lambda key, lead=(): 0.5 * jax.random.truncated_normal(key, -2.0, 2.0, (*lead, n, w))
  if isinstance(rngs, (jax.Array, np.ndarray)):
    keys = rngs if jax.dtypes.issubdtype(rngs.dtype, jax.dtypes.prng_key) else (
        jax.random.wrap_key_data(jnp.asarray(rngs, jnp.uint32)))
    if keys.shape != batch:
      raise ValueError(f"PRNG keys for the initial memory need the batch shape {batch} "
                       f"(one per sequence); got keys of shape {keys.shape}")
    return jax.vmap(draw)(keys.reshape(-1)).reshape(*batch, n, w)
  if not isinstance(rngs, (nnx.Rngs, nnx.RngStream)):
    raise TypeError("rngs must be an nnx.Rngs, an nnx.RngStream or a PRNG key array; got "
                    f"{type(rngs).__name__}")
  key = rngs() if isinstance(rngs, nnx.RngStream) else (
      rngs.carry() if "carry" in rngs else rngs.params())
  return draw(key, batch)


class NTMCell(nnx.RNNCellBase):
  """A Neural Turing Machine step: controller, heads, memory (Graves et al. 2014).

  Args:
    in_features: I, the size of the external input.
    out_features: O, the size of the output (logits).
    memory_size: N, the number of memory slots.
    word_size: W, the size of a memory word.
    num_read_heads: R.
    num_write_heads: H.
    shift_range: largest shift a head can make in one step; shifts go from
      -shift_range to +shift_range (S = 2 x shift_range + 1 <= N).
    controller: 'lstm' (default) or 'feedforward'.
    controller_size: C, the controller's units.
    memory_init: 'constant' (every entry 1e-6), 'learned' (a trained [N, W]
      parameter) or 'random' (truncated normal, std 0.5, drawn per sequence
      from the `rngs` given to `initialize_carry`).
    clip_value: controller outputs (the interface pre-activations) and the
      output logits are clipped to [-clip_value, clip_value]; None: no clip.
    fused: run the memory part of a step (addressing, reads, write) as
      `memory_step`, one function with a hand-written backward pass (faster
      training, same values and gradients); False: compose the pure
      primitives directly (`reference_memory_step`).
    rngs: parameter initialisation.
  """

  def __init__(self, in_features: int, out_features: int, *, memory_size: int = 128,
               word_size: int = 20, num_read_heads: int = 1, num_write_heads: int = 1,
               shift_range: int = 1, controller: str = "lstm", controller_size: int = 100,
               memory_init: str = "constant", clip_value: float | None = 20.0,
               fused: bool = True, rngs: nnx.Rngs):
    in_features = _checks.integer(in_features, "in_features")
    out_features = _checks.integer(out_features, "out_features")
    validate_memory_options(memory_size, word_size, num_read_heads, num_write_heads,
                            controller_size, memory_init, controller, shift_range)
    _batching.check_clip_value(clip_value)
    self.in_features = in_features
    self.out_features = out_features
    self.memory_size = memory_size
    self.word_size = word_size
    self.num_read_heads = num_read_heads
    self.num_write_heads = num_write_heads
    self.shift_range = shift_range
    self.memory_init = memory_init
    self.clip_value = clip_value
    self.fused = bool(fused)
    n, w, r, h = memory_size, word_size, num_read_heads, num_write_heads
    s = 2 * shift_range + 1
    # Per head: key [W], strength, gate, shift [S], gamma; write heads add erase [W], add [W].
    self._address_size = w + s + 3
    self.controller = controllers.make_controller(controller, in_features + r * w,
                                                  controller_size, rngs=rngs)
    self.interface = nnx.Linear(controller_size, (r + h) * self._address_size + h * 2 * w,
                                rngs=rngs)
    self.output = nnx.Linear(controller_size + r * w, out_features, rngs=rngs)
    normal = jax.nn.initializers.normal(0.1)
    self.initial_read_vectors = nnx.Param(normal(rngs.params(), (r, w)))
    # Learned initial weightings (softmax of these logits), starting focused on slot 0.
    logits = jnp.zeros((r + h, n)).at[:, 0].set(5.0)
    self.initial_weight_logits = nnx.Param(logits)
    if memory_init == "learned":
      self.initial_memory = nnx.Param(normal(rngs.params(), (n, w)))

  @property
  def num_feature_axes(self) -> int:
    return 1

  def initialize_carry(self, input_shape: tuple[int, ...], rngs: nnx.Rngs | None = None,
                       carry_init: Any = None) -> NTMState:
    """The initial state for inputs of shape `input_shape` ([B, I]; [I] for one sequence).

    Args:
      input_shape: the shape of one step's input; all but the last axis are batch.
      rngs: needed only with memory_init='random': an `nnx.Rngs` (its `carry`
        stream, else `params`), an `nnx.RngStream`, or a PRNG key array of the
        batch shape, one key per sequence (the trainer's way: a sequence's
        memory then does not depend on the batch it is in).
      carry_init: unused (the initial state is set by `memory_init`).
    """
    del carry_init
    batch = tuple(input_shape[:-1])
    n, w, r = self.memory_size, self.word_size, self.num_read_heads
    memory = initial_memory(self, batch, rngs)
    weights = jax.nn.softmax(self.initial_weight_logits[...], axis=-1)
    reads = jnp.tanh(self.initial_read_vectors[...])
    expand = lambda x: jnp.broadcast_to(x, (*batch, *x.shape))
    return NTMState(
        controller=self.controller.initial_state(batch),
        memory_t=jnp.swapaxes(jnp.broadcast_to(memory, (*batch, n, w)), -1, -2),
        read_weights=expand(weights[:r]),
        write_weights=expand(weights[r:]),
        read_vectors=expand(reads),
    )

  def _clip(self, x: jax.Array) -> jax.Array:
    if self.clip_value is None:
      return x
    return jnp.clip(x, -self.clip_value, self.clip_value)

  def __call__(self, carry: NTMState, inputs: jax.Array) -> tuple[NTMState, jax.Array]:
    """One step.

    Args:
      carry: the previous `NTMState` (batch shape [B]).
      inputs: [B, I] this step's input.

    Returns:
      (the new `NTMState`, [B, O] output logits).
    """
    inputs = _checks.as_array(inputs, "inputs")
    _batching.check_inputs(inputs, self.in_features, carry)
    if inputs.ndim != 2:  # one sequence, or several batch axes: flatten to one
      return _batching.with_one_batch_axis(self, carry, inputs)
    new, y, _ = self.step_with_deltas(carry, inputs, None)
    return new, y

  def hoisted_linears(self) -> tuple[nnx.Linear, ...]:
    """The linear layers of a step, in the order of `step_with_deltas`' deltas."""
    return (self.controller.linear, self.interface, self.output)

  def step_with_deltas(self, carry: NTMState, inputs: jax.Array, deltas: tuple | None,
                       dense: Callable[[int, jax.Array], jax.Array] | None = None
                       ) -> tuple[NTMState, jax.Array, tuple[jax.Array, ...]]:
    """One step on a [B, I] batch, exposing the linear layers (see `sequence.run_cell`).

    Args:
      carry: the previous `NTMState`.
      inputs: [B, I].
      deltas: None, or one array per layer of `hoisted_linears()` added to
        that layer's output (zeros leave the step unchanged; their gradients
        are the gradients of the layers' outputs).
      dense: `dense(i, x)` computes layer i of `hoisted_linears()` on x
        (default: the layer itself); `sequence.run_cell` passes one with a
        faster backward pass.

    Returns:
      (new state, [B, O] logits, the inputs of the `hoisted_linears()`).
      The step uses no parameters besides those layers'.
    """
    b = inputs.shape[0]
    d_ctrl, d_iface, d_out = (None, None, None) if deltas is None else deltas
    r, h, w, a = self.num_read_heads, self.num_write_heads, self.word_size, self._address_size
    controller_in = jnp.concatenate([inputs, carry.read_vectors.reshape(b, r * w)], axis=-1)
    if dense is None:
      layers = self.hoisted_linears()
      dense = lambda i, v: layers[i](v)
    ctrl_linear_in = self.controller.linear_input(carry.controller, controller_in)
    z = dense(0, ctrl_linear_in)
    controller_state, hidden = self.controller.activate(
        carry.controller, z if d_ctrl is None else z + d_ctrl)
    iface = dense(1, hidden)
    iface = self._clip(iface if d_iface is None else iface + d_iface)
    address = iface[:, :(r + h) * a].reshape(b, r + h, a)
    erase_add = iface[:, (r + h) * a:].reshape(b, h, 2 * w)
    key = jnp.tanh(address[..., :w])
    strength = jax.nn.softplus(address[..., w])
    gate = jax.nn.sigmoid(address[..., w + 1])
    gamma = 1.0 + jax.nn.softplus(address[..., w + 2])
    shift_w = jax.nn.softmax(address[..., w + 3:], axis=-1)
    erase = jax.nn.sigmoid(erase_add[..., :w])
    add = jnp.tanh(erase_add[..., w:])

    prev_w = jnp.concatenate([carry.read_weights, carry.write_weights], axis=1)
    step = memory_step if self.fused else reference_memory_step
    new_w, reads, memory_t = step(r, carry.memory_t, prev_w, key, strength, gate, shift_w,
                                  gamma, erase, add)  # [B, R+H, N], [B, R, W], [B, W, N]
    read_w, write_w = new_w[:, :r], new_w[:, r:]
    out_in = jnp.concatenate([hidden, reads.reshape(b, r * w)], axis=-1)
    y = dense(2, out_in)
    y = self._clip(y if d_out is None else y + d_out)
    return (NTMState(controller_state, memory_t, read_w, write_w, reads), y,
            (ctrl_linear_in, hidden, out_in))


# ----------------------------------------------------------------------------- fused memory step
#
# `memory_step` is addressing (eqs. 5-9) for all heads, the reads (eq. 2) and the
# write (eqs. 3-4) of one step on a batch, as one function with a hand-written
# backward pass (`jax.custom_vjp`). It computes what `addressing.ntm_weights`,
# `access.read` and `access.write` compute (tests/test_ntm.py checks values and
# gradients against jax.grad of those pure functions), but saves only small
# [B, K, N] intermediates besides the memory and writes each gradient as a few
# whole-batch array expressions, which XLA:CPU fuses into far fewer and cheaper
# kernels than the automatic transpose of the vmapped primitives. The memory is
# word-major, [B, W, N] (see `NTMState`): every [B, W, N] expression below runs
# along N in the minor axis. Sums over W are W additions of [.., N] slices
# (`_sum_words`); sums over N that give [B, K, W] are batched products
# (`jnp.einsum`), 1.05x faster on one device than a multiply-and-reduce, side by side.


def _shifts(x: jax.Array, half: int, sign: int = 1) -> list[jax.Array]:
  """[roll(x, sign * o) for o in -half..half] along the last axis, as slices of one array.

  x is padded circularly once (one concatenate) and each shift is a slice of
  it, which XLA fuses into the consumer, instead of `jnp.roll`'s slices and
  concatenate per shift.
  """
  if half == 0:
    return [x]
  n = x.shape[-1]
  padded = jnp.concatenate([x[..., n - half:], x, x[..., :half]], axis=-1)
  # roll(x, s)[i] = x[i - s] = padded[i - s + half].
  return [padded[..., half - sign * o: half - sign * o + n] for o in range(-half, half + 1)]


def _outer(w: jax.Array, v: jax.Array) -> jax.Array:
  """[B, N] x [B, W] -> [B, W, N]: the outer product v w^T, word-major."""
  return w[:, None, :] * v[:, :, None]


def _write_factors(write_w: jax.Array, erase: jax.Array) -> list[jax.Array]:
  """The erase factors (1 - w_h e_h^T), [B, W, N] each, one per write head."""
  return [1.0 - _outer(write_w[:, h], erase[:, h]) for h in range(erase.shape[1])]


def _sum_words(term: Callable[[int], jax.Array], w: int) -> jax.Array:
  """sum_i term(i) for i < w: a sum over the word axis W of [B, W, N] products.

  Written as W element-wise additions of [.., N] slices instead of a reduce over
  the middle axis, which XLA:CPU emits as scalar loops inside the fusion; with
  N minor the additions vectorise (NTM training about 1.1x faster on one device
  with `_shifts`, side by side).
  """
  out = term(0)
  for i in range(1, w):
    out = out + term(i)
  return out


def _product(factors: list[jax.Array]) -> jax.Array:
  out = factors[0]
  for f in factors[1:]:
    out = out * f
  return out


def _memory_step_forward(num_reads, memory_t, prev_w, key, strength, gate, shift_w, gamma,
                         erase, add):
  half = shift_w.shape[-1] // 2
  mem_norm = jnp.sqrt(jnp.sum(memory_t * memory_t, axis=1) + addressing.NORM_EPSILON)  # [B, N]
  key_norm = jnp.sqrt(jnp.sum(key * key, axis=-1) + addressing.NORM_EPSILON)          # [B, K]
  w = memory_t.shape[1]
  dot = _sum_words(lambda i: memory_t[:, None, i] * key[:, :, i, None], w)              # [B, K, N]
  sim = dot / (mem_norm[:, None, :] * key_norm[..., None])                             # eq. 6
  content = jax.nn.softmax(strength[..., None] * sim, axis=-1)                        # eq. 5
  gated = gate[..., None] * content + (1.0 - gate[..., None]) * prev_w                 # eq. 7
  shifted = sum(shift_w[..., i, None] * g for i, g in enumerate(_shifts(gated, half)))  # eq. 8
  log_shifted = jnp.log(shifted + addressing.SHARPEN_EPSILON)
  weights = jax.nn.softmax(gamma[..., None] * log_shifted, axis=-1)                    # eq. 9
  read_w, write_w = weights[:, :num_reads], weights[:, num_reads:]
  reads = jnp.einsum("bkn,bwn->bkw", read_w, memory_t)                                  # eq. 2
  added = sum(_outer(write_w[:, h], add[:, h]) for h in range(add.shape[1]))
  new_memory_t = memory_t * _product(_write_factors(write_w, erase)) + added             # eqs. 3-4
  residuals = (memory_t, prev_w, key, strength, gate, shift_w, gamma, erase, add, mem_norm,
               key_norm, sim, content, gated, shifted, log_shifted, weights)
  return (weights, reads, new_memory_t), residuals


def _memory_step_backward(num_reads, residuals, cotangents):
  (memory_t, prev_w, key, strength, gate, shift_w, gamma, erase, add, mem_norm, key_norm, sim,
   content, gated, shifted, log_shifted, weights) = residuals
  d_weights, d_reads, d_new = cotangents  # d_new: [B, W, N]
  half = shift_w.shape[-1] // 2
  w = memory_t.shape[1]
  read_w, write_w = weights[:, :num_reads], weights[:, num_reads:]
  heads = erase.shape[1]
  # Write: M' = M * prod_h F_h + sum_h w_h a_h^T with F_h = 1 - w_h e_h^T.
  factors = _write_factors(write_w, erase)
  d_memory = d_new * _product(factors)
  d_keep = d_new * memory_t
  d_add = jnp.einsum("bwn,bhn->bhw", d_new, write_w)                                    # [B, H, W]
  d_write_w, d_erase = [], []
  for h in range(heads):
    others = [f for i, f in enumerate(factors) if i != h]
    d_factor = d_keep * _product(others) if others else d_keep
    d_write_w.append(_sum_words(
        lambda i, h=h, d_factor=d_factor: (d_new[:, i] * add[:, h, i, None]
                                           - d_factor[:, i] * erase[:, h, i, None]), w))
    d_erase.append(-jnp.einsum("bwn,bn->bw", d_factor, write_w[:, h]))
  d_erase = jnp.stack(d_erase, axis=1)
  # Read: r = w M.
  d_memory = d_memory + sum(_outer(read_w[:, r], d_reads[:, r]) for r in range(num_reads))
  d_read_w = _sum_words(lambda i: d_reads[:, :, i, None] * memory_t[:, None, i], w)    # [B, R, N]
  d_w = d_weights + jnp.concatenate([d_read_w, jnp.stack(d_write_w, axis=1)], axis=1)
  # Sharpen: w = softmax(gamma log(s + eps)).
  d_logits = weights * (d_w - jnp.sum(d_w * weights, axis=-1, keepdims=True))
  d_gamma = jnp.sum(d_logits * log_shifted, axis=-1)
  d_shifted = gamma[..., None] * d_logits / (shifted + addressing.SHARPEN_EPSILON)
  # Shift: s[i] = sum_o k_o g[i - o].
  d_gated = sum(shift_w[..., i, None] * d for i, d in enumerate(_shifts(d_shifted, half, -1)))
  d_shift = jnp.stack([jnp.sum(d_shifted * g, axis=-1) for g in _shifts(gated, half)], axis=-1)
  # Interpolate: g c + (1 - g) w_prev.
  d_content = gate[..., None] * d_gated
  d_gate = jnp.sum(d_gated * (content - prev_w), axis=-1)
  d_prev = (1.0 - gate[..., None]) * d_gated
  # Content: c = softmax(beta K(M, k)), K = M k / (|M| |k|).
  d_z = content * (d_content - jnp.sum(d_content * content, axis=-1, keepdims=True))
  d_strength = jnp.sum(d_z * sim, axis=-1)
  d_sim = strength[..., None] * d_z
  d_dot = d_sim / (mem_norm[:, None, :] * key_norm[..., None])                         # [B, K, N]
  d_mem_norm = -jnp.sum(d_sim * sim, axis=1) / mem_norm                                # [B, N]
  d_key_norm = -jnp.sum(d_sim * sim, axis=-1) / key_norm                               # [B, K]
  d_memory = (d_memory + sum(_outer(d_dot[:, k], key[:, k]) for k in range(key.shape[1]))
              + (d_mem_norm / mem_norm)[:, None, :] * memory_t)
  d_key = (jnp.einsum("bkn,bwn->bkw", d_dot, memory_t)
           + (d_key_norm / key_norm)[..., None] * key)
  return (d_memory, d_prev, d_key, d_strength, d_gate, d_shift, d_gamma, d_erase, d_add)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def memory_step(num_reads: int, memory_t: jax.Array, prev_w: jax.Array, key: jax.Array,
                strength: jax.Array, gate: jax.Array, shift_w: jax.Array, gamma: jax.Array,
                erase: jax.Array, add: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """All heads' addressing, the reads and the write of one NTM step, on a batch.

  Equal to `addressing.ntm_weights` per head, `access.read` with the first
  `num_reads` weightings and `access.write` with the others (K = R + H), with
  a hand-written backward pass. The memory is word-major (transposed).

  Args:
    num_reads: R, the number of read heads (the first R of the K heads).
    memory_t: [B, W, N] memory M_{t-1}, transposed.
    prev_w: [B, K, N] weightings of the previous step.
    key: [B, K, W]; strength, gate, gamma: [B, K]; shift_w: [B, K, S].
    erase, add: [B, H, W] the write heads' erase (in [0, 1]) and add vectors.

  Returns:
    ([B, K, N] new weightings, [B, R, W] read vectors, [B, W, N] memory M_t
    transposed).
  """
  return _memory_step_forward(num_reads, memory_t, prev_w, key, strength, gate, shift_w, gamma,
                              erase, add)[0]


memory_step.defvjp(_memory_step_forward, _memory_step_backward)


def reference_memory_step(num_reads: int, memory_t: jax.Array, prev_w: jax.Array,
                          key: jax.Array, strength: jax.Array, gate: jax.Array,
                          shift_w: jax.Array, gamma: jax.Array, erase: jax.Array,
                          add: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`memory_step` built from the pure primitives (automatic differentiation)."""
  memory = jnp.swapaxes(memory_t, 1, 2)  # the primitives take [N, W]
  heads = _batched(addressing.ntm_weights, None, 0, 0, 0, 0, 0, 0)
  weights = heads(memory, prev_w, key, strength, gate, shift_w, gamma)
  reads = jax.vmap(access.read)(memory, weights[:, :num_reads])
  new_memory = jax.vmap(access.write)(memory, weights[:, num_reads:], erase, add)
  return weights, reads, jnp.swapaxes(new_memory, 1, 2)
