"""Recurrent layers over ``lax.scan`` with backpropagation through time by hand: SimpleRNN, LSTM, GRU.

Input ``x`` (..., T, D): leading axes (the batch) are independent sequences,
axis -2 is time. Each layer runs a cell over time,

    h_t = cell(x_t, h_{t-1})          (an LSTM also carries c_t)

and returns every hidden state (..., T, H) (``return_sequences=True``) or the
last one (..., H).

**Backpropagation through time.** The input projections of all steps are one
matrix product before the scan, ``Z_x = X W_x + b`` (T B, G H) for G gates.
The forward scan records each step's gates. The rule is a *reverse* scan
that carries ``dh`` (and ``dc``) from step t back to t-1:

    dh_t   = y_bar_t + dh_carry                    (the output's and the future's cotangents add)
    dz_t   = (the cell's local rule)(dh_t, ...)     (B, G H)   pre-activation cotangents
    dh_carry <- dz_t W_h^T (+ the cell's direct path)

and, after the scan, the parameter cotangents are again whole-sequence matrix
products: ``W_x_bar = X^T dZ``, ``W_h_bar = H_prev^T dZ``, ``b_bar = sum dZ``,
``X_bar = dZ W_x^T``. Nothing of size (G H)^2 is built per step.

**Truncation.** ``truncate=k`` cuts the gradient through the state every k
steps: the state entering step t = k, 2k, ... is a constant for
differentiation (``lax.stop_gradient`` in the forward pass, a zeroed carry in
the rule), so ``jax.grad`` of the layer and its rule agree. The forward pass
is unchanged.

**Initial state** (``initial_state=``): ``"zeros"``; ``"learned"`` (params
``h0`` (H,), and ``c0`` for the LSTM, shared by every sequence); or
``"input"``: the input is ``(x, h0)`` (``(x, h0, c0)`` for the LSTM) with
``h0`` (..., H), whose cotangent the rule returns.

Padded sequences: the state at a valid step never depends on later (padded)
steps, so pad on the right and pick each sequence's state at its last valid
step with :func:`jaxnets.layers.SequencePool` ``("last")``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxnets import _checks
from jaxnets import initializers as inits
from jaxnets.layers import _util
from jaxnets.layers._taped import build_taped
from jaxnets.layers.core import Layer

__all__ = ["SimpleRNN", "LSTM", "GRU"]

_INITIAL = ("zeros", "learned", "input")


@dataclasses.dataclass(frozen=True)
class _Cell:
    """One kind of cell: its gates, its state, its step and the step's rule.

    ``step(params, carry, zx_t) -> (carry, h_t, saved_t)``;
    ``step_back(params, saved_t, dcarry) -> (dcarry_prev, dzx_t, dzh_t)`` where
    ``dcarry`` already includes the output's cotangent in its ``h`` part.
    """

    name: str
    gates: int
    state: tuple  # names of the carried arrays: ("h",) or ("h", "c")
    step: Callable
    step_back: Callable
    separate_hidden_bias: bool = False  # GRU: b_h inside the reset gate's product


# -- SimpleRNN: h' = tanh(x W_x + h W_h + b) ------------------------------------


def _rnn_step(params, carry, zx):
    (h,) = carry
    h_new = jnp.tanh(zx + h @ params["wh"])
    return (h_new,), h_new, (h, h_new)


def _rnn_back(params, saved, dcarry):
    h_prev, h = saved
    (dh,) = dcarry
    dz = dh * (1 - h * h)  # tanh' = 1 - tanh^2
    return (dz @ params["wh"].T,), dz, dz


# -- LSTM: i, f, g, o gates; c' = f c + i g; h' = o tanh(c') --------------------


def _lstm_step(params, carry, zx):
    h, c = carry
    z = zx + h @ params["wh"]  # (B, 4H)
    zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
    i, f, g, o = jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jnp.tanh(zg), jax.nn.sigmoid(zo)
    c_new = f * c + i * g
    tc = jnp.tanh(c_new)
    h_new = o * tc
    return (h_new, c_new), h_new, (h, c, i, f, g, o, tc)


def _lstm_back(params, saved, dcarry):
    h_prev, c_prev, i, f, g, o, tc = saved
    dh, dc = dcarry
    do = dh * tc
    dc = dc + dh * o * (1 - tc * tc)  # through h' = o tanh(c'), plus the future's dc
    di, df, dg = dc * g, dc * c_prev, dc * i
    dz = jnp.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g), do * o * (1 - o)], axis=-1)
    return (dz @ params["wh"].T, dc * f), dz, dz


# -- GRU (Cho et al. 2014, as PyTorch and flax): reset r, update u, candidate n --
#    r = s(x W_xr + b_xr + h W_hr + b_hr), u = s(... u ...),
#    n = tanh(x W_xn + b_xn + r * (h W_hn + b_hn)),  h' = (1 - u) n + u h


def _gru_step(params, carry, zx):
    (h,) = carry
    zh = h @ params["wh"] + params["bh"]  # (B, 3H)
    xr, xu, xn = jnp.split(zx, 3, axis=-1)
    hr, hu, hn = jnp.split(zh, 3, axis=-1)
    r, u = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xu + hu)
    n = jnp.tanh(xn + r * hn)
    h_new = (1 - u) * n + u * h
    return (h_new,), h_new, (h, r, u, n, hn)


def _gru_back(params, saved, dcarry):
    h_prev, r, u, n, hn = saved
    (dh,) = dcarry
    dn = dh * (1 - u) * (1 - n * n)  # into n's pre-activation
    du = dh * (h_prev - n) * u * (1 - u)
    dr = dn * hn * r * (1 - r)
    dzx = jnp.concatenate([dr, du, dn], axis=-1)  # x's side of each gate
    dzh = jnp.concatenate([dr, du, dn * r], axis=-1)  # h's side: the candidate's is gated by r
    return (dh * u + dzh @ params["wh"].T,), dzx, dzh


_CELLS = {
    "rnn": _Cell("rnn", 1, ("h",), _rnn_step, _rnn_back),
    "lstm": _Cell("lstm", 4, ("h", "c"), _lstm_step, _lstm_back),
    "gru": _Cell("gru", 3, ("h",), _gru_step, _gru_back, separate_hidden_bias=True),
}


def _cut(t, truncate):
    """Whether the gradient through the state entering step ``t`` is cut."""
    return jnp.logical_and(t % truncate == 0, t > 0)


def _recurrent(cell: _Cell, spec: str, hidden: int, return_sequences: bool, initial_state: str,
               truncate: int | None, w_init, recurrent_init, b_init) -> Layer:
    g = cell.gates
    parts = len(cell.state)
    with_input = initial_state == "input"
    arity = 1 + parts if with_input else 1
    names = ("x",) + tuple(f"{s}0" for s in cell.state) if with_input else ("x",)

    def split_input(x):
        if not with_input:
            return x, None
        if not isinstance(x, (tuple, list)) or len(x) != arity:
            got = f"a tuple of {len(x)}" if isinstance(x, (tuple, list)) else f"one {type(x).__name__}"
            raise ValueError(f"{spec} expects the input ({', '.join(names)}) (initial_state='input'), got {got}")
        return x[0], tuple(x[1:])

    def check_shape(input_shape):
        if with_input and not (isinstance(input_shape, (tuple, list)) and len(input_shape) == arity
                               and all(isinstance(s, (tuple, list)) for s in input_shape)):
            raise ValueError(f"{spec} expects the input ({', '.join(names)}), so input_shape must be a tuple of "
                             f"{arity} shapes, got {input_shape!r}")
        shape = input_shape[0] if with_input else input_shape
        if len(shape) < 2:
            raise ValueError(f"{spec} expects x of shape (..., time, features), got {tuple(shape)}")
        if shape[-2] == 0:
            raise ValueError(f"{spec}: sequences must not be empty, got x of shape {tuple(shape)}")
        if with_input:
            for name, s in zip(names[1:], input_shape[1:]):
                want = tuple(shape[:-2]) + (hidden,)
                if len(s) != len(want) or any(a != b and -1 not in (a, b) for a, b in zip(s, want)):
                    raise ValueError(f"{spec}: {name} must have shape {want} (x's leading axes, hidden), got {tuple(s)}")

    def init(key, input_shape):
        shape = input_shape[0] if with_input else input_shape
        d = _util.check_last_dim(shape, spec)
        k_x, k_h = jax.random.split(key)
        wh = jnp.concatenate([recurrent_init(k, (hidden, hidden), jnp.float32) for k in jax.random.split(k_h, g)], axis=1)
        params = {"wx": w_init(k_x, (d, g * hidden), jnp.float32), "wh": wh}
        b = jnp.zeros((g * hidden,), jnp.float32) if b_init is None else b_init(hidden)
        if cell.separate_hidden_bias:
            params["bx"], params["bh"] = b, jnp.zeros((g * hidden,), jnp.float32)
        else:
            params["b"] = b
        if initial_state == "learned":
            for s in cell.state:
                params[f"{s}0"] = jnp.zeros((hidden,), jnp.float32)
        out = tuple(shape[:-1]) + (hidden,) if return_sequences else tuple(shape[:-2]) + (hidden,)
        return out, params

    def bias(params):
        return params["bx"] if cell.separate_hidden_bias else params["b"]

    def forward(params, x):
        x, given = split_input(x)
        _util.check_input(x, spec, min_rank=2)
        lead, (t_len, d) = x.shape[:-2], x.shape[-2:]
        if t_len == 0:
            raise ValueError(f"{spec}: sequences must not be empty, got x of shape {tuple(x.shape)}")
        if d != params["wx"].shape[0]:
            raise ValueError(f"{spec} expects x with {params['wx'].shape[0]} features (last axis), got {tuple(x.shape)}")
        b_size = 1
        for n in lead:
            b_size *= n
        xs = jnp.swapaxes(x.reshape((b_size, t_len, d)), 0, 1)  # (T, B, D) time-major
        zx = xs @ params["wx"] + bias(params)  # (T, B, G H): every step's input projection at once
        if with_input:
            carry0 = []
            for name, a in zip(names[1:], given):
                _util.check_input(a, spec, min_rank=1)
                if tuple(a.shape) != tuple(lead) + (hidden,):
                    raise ValueError(f"{spec}: {name} must have shape {tuple(lead) + (hidden,)} (x's leading axes, "
                                     f"hidden), got {tuple(a.shape)}")
                carry0.append(a.reshape(b_size, hidden))
            carry0 = tuple(carry0)
        elif initial_state == "learned":
            carry0 = tuple(jnp.broadcast_to(params[f"{s}0"], (b_size, hidden)) for s in cell.state)
        else:
            carry0 = tuple(jnp.zeros((b_size, hidden), x.dtype) for _ in cell.state)

        def body(carry, inputs):
            zx_t, t = inputs
            if truncate is not None:
                cut = _cut(t, truncate)
                carry = tuple(jnp.where(cut, lax.stop_gradient(a), a) for a in carry)
            carry, h, saved = cell.step(params, carry, zx_t)
            return carry, (h, saved)

        _, (hs, saved) = lax.scan(body, carry0, (zx, jnp.arange(t_len)))  # hs (T, B, H)
        if return_sequences:
            y = jnp.swapaxes(hs, 0, 1).reshape(tuple(lead) + (t_len, hidden))
        else:
            y = hs[-1].reshape(tuple(lead) + (hidden,))
        return y, {"xs": xs, "saved": saved}

    def backward(params, tape, y_bar):
        xs, saved = tape["xs"], tape["saved"]
        t_len, b_size, d = xs.shape
        lead = y_bar.shape[:-2] if return_sequences else y_bar.shape[:-1]
        if return_sequences:
            dys = jnp.swapaxes(y_bar.reshape(b_size, t_len, hidden), 0, 1)  # (T, B, H)
        else:
            dys = jnp.zeros((t_len, b_size, hidden), y_bar.dtype).at[-1].set(y_bar.reshape(b_size, hidden))

        def body(dcarry, inputs):
            dy, saved_t, t = inputs
            dcarry = (dcarry[0] + dy,) + dcarry[1:]  # the output's and the future's cotangents add
            dprev, dzx, dzh = cell.step_back(params, saved_t, dcarry)
            if truncate is not None:
                keep = jnp.logical_not(_cut(t, truncate))
                dprev = tuple(jnp.where(keep, a, jnp.zeros_like(a)) for a in dprev)
            return dprev, (dzx, dzh)

        zeros = tuple(jnp.zeros((b_size, hidden), y_bar.dtype) for _ in cell.state)
        d_carry0, (dzx, dzh) = lax.scan(body, zeros, (dys, saved, jnp.arange(t_len)), reverse=True)
        h_prev = saved[0]  # (T, B, H): the state each step received
        rows = lambda a: a.reshape(t_len * b_size, a.shape[-1])  # noqa: E731  (T, B, n) -> (T B, n)
        # summed over time and batch in float32 for 16-bit dtypes
        grads = {"wx": _util.batch_matmul_t(rows(xs), rows(dzx)), "wh": _util.batch_matmul_t(rows(h_prev), rows(dzh))}
        if cell.separate_hidden_bias:
            grads["bx"], grads["bh"] = _util.sum_leading(dzx), _util.sum_leading(dzh)
        else:
            grads["b"] = _util.sum_leading(dzx)
        x_bar = jnp.swapaxes(dzx @ params["wx"].T, 0, 1).reshape(tuple(lead) + (t_len, d))  # (..., T, D)
        if initial_state == "learned":
            for s, dc in zip(cell.state, d_carry0):
                grads[f"{s}0"] = jnp.sum(dc, axis=0)
        if with_input:
            return grads, (x_bar,) + tuple(dc.reshape(tuple(lead) + (hidden,)) for dc in d_carry0)
        return grads, x_bar

    return build_taped(cell.name, spec, init, forward, backward, check_shape)


def _options(cell_name: str, hidden, return_sequences, initial_state, truncate, w_init, recurrent_init):
    hidden = _checks.positive_int(hidden, "hidden")
    if initial_state not in _INITIAL:
        raise ValueError(f"{cell_name}: initial_state must be one of {_INITIAL}, got {initial_state!r}")
    truncate = None if truncate is None else _checks.positive_int(truncate, "truncate")
    w_init = _util.check_initializer(w_init or inits.lecun_normal(), "w_init")
    recurrent_init = _util.check_initializer(recurrent_init or inits.orthogonal(), "recurrent_init")
    opts = [str(hidden), "" if return_sequences else "return_sequences=False",
            "" if initial_state == "zeros" else f"initial_state={initial_state!r}",
            "" if truncate is None else f"truncate={truncate}"]
    return hidden, truncate, w_init, recurrent_init, f"{cell_name}({', '.join(o for o in opts if o)})"


_ARGS_DOC = """
    Args:
      hidden: H, the size of the hidden state.
      return_sequences: return every state (..., T, H); else the last (..., H).
      initial_state: ``"zeros"``, ``"learned"`` (params) or ``"input"`` (the
        input becomes a tuple; module docstring).
      truncate: cut backpropagation through the state every ``truncate``
        steps (module docstring); default: full BPTT.
      w_init: initializer of ``W_x``; default ``lecun_normal()``.
      recurrent_init: initializer of each gate's (H, H) block of ``W_h``;
        default ``orthogonal()``.

    Raises:
      ValueError: empty sequences, an initial state of the wrong shape, a
        wrong input arity; naming the layer and the shapes.
"""


def SimpleRNN(hidden: int, *, return_sequences: bool = True, initial_state: str = "zeros",
              truncate: int | None = None, w_init: inits.Initializer | None = None,
              recurrent_init: inits.Initializer | None = None) -> Layer:
    """Elman RNN: ``h_t = tanh(x_t W_x + h_{t-1} W_h + b)``.

    Rule per step: ``dz = dh (1 - h_t^2)``, ``dh_{t-1} = dz W_h^T``: the
    cotangent is multiplied by ``diag(1 - h^2) W_h^T`` at every step back, so
    it shrinks geometrically when that product's norm is below 1 (vanishing
    gradients; ``experiments/adding_problem.py`` shows it).

    Params: ``{"wx": (D, H), "wh": (H, H), "b": (H,)}`` (+ ``"h0"`` if learned).
    """
    hidden, truncate, w_init, recurrent_init, spec = _options("SimpleRNN", hidden, return_sequences, initial_state,
                                                              truncate, w_init, recurrent_init)
    return _recurrent(_CELLS["rnn"], spec, hidden, return_sequences, initial_state, truncate, w_init, recurrent_init, None)


def LSTM(hidden: int, *, return_sequences: bool = True, initial_state: str = "zeros", truncate: int | None = None,
         forget_bias: float = 1.0, w_init: inits.Initializer | None = None,
         recurrent_init: inits.Initializer | None = None) -> Layer:
    """Long short-term memory (Hochreiter & Schmidhuber, 1997; forget gate of Gers et al., 2000).

    With ``z = x_t W_x + h_{t-1} W_h + b`` split into four (B, H) blocks:
    ``i, f, o = sigmoid(z_i, z_f, z_o)``, ``g = tanh(z_g)``,
    ``c_t = f c_{t-1} + i g``, ``h_t = o tanh(c_t)``.

    Rule per step (``dh``, ``dc`` arriving from the output and step t+1):
    ``dc += dh o (1 - tanh^2 c_t)``; ``dz_i = dc g i(1-i)``,
    ``dz_f = dc c_{t-1} f(1-f)``, ``dz_g = dc i (1-g^2)``,
    ``dz_o = dh tanh(c_t) o(1-o)``; then ``dc_{t-1} = dc f`` and
    ``dh_{t-1} = dz W_h^T``. The cell path ``dc_{t-1} = dc f`` has no
    weight matrix and no squashing: with ``f`` near 1 the gradient survives
    many steps.

    ``forget_bias`` (default 1, as Keras's ``unit_forget_bias`` and
    Jozefowicz et al., 2015) initialises ``b_f``.

    Params: ``{"wx": (D, 4H), "wh": (H, 4H), "b": (4H,)}`` in gate order i, f, g, o
    (+ ``"h0"``, ``"c0"`` if learned). With ``initial_state="input"`` the
    input is ``(x, h0, c0)``.
    """
    hidden, truncate, w_init, recurrent_init, spec = _options("LSTM", hidden, return_sequences, initial_state,
                                                              truncate, w_init, recurrent_init)
    forget_bias = float(forget_bias)

    def b_init(h):
        return jnp.zeros((4 * h,), jnp.float32).at[h:2 * h].set(forget_bias)

    return _recurrent(_CELLS["lstm"], spec, hidden, return_sequences, initial_state, truncate, w_init, recurrent_init,
                      b_init)


def GRU(hidden: int, *, return_sequences: bool = True, initial_state: str = "zeros", truncate: int | None = None,
        w_init: inits.Initializer | None = None, recurrent_init: inits.Initializer | None = None) -> Layer:
    """Gated recurrent unit (Cho et al., 2014), in PyTorch's and flax's variant.

    With ``a = x_t W_x + b_x`` and ``m = h_{t-1} W_h + b_h`` split into
    reset, update and candidate blocks: ``r = sigmoid(a_r + m_r)``,
    ``u = sigmoid(a_u + m_u)``, ``n = tanh(a_n + r m_n)``,
    ``h_t = (1 - u) n + u h_{t-1}``.

    Rule per step: ``dn = dh (1-u)(1-n^2)``, ``du = dh (h_{t-1} - n) u(1-u)``,
    ``dr = dn m_n r(1-r)``; the x side of the pre-activations is
    ``[dr, du, dn]``, the h side ``[dr, du, r dn]``, and
    ``dh_{t-1} = dh u + [dr, du, r dn] W_h^T``.

    Params: ``{"wx": (D, 3H), "wh": (H, 3H), "bx": (3H,), "bh": (3H,)}`` in gate
    order r, u, n (+ ``"h0"`` if learned).
    """
    hidden, truncate, w_init, recurrent_init, spec = _options("GRU", hidden, return_sequences, initial_state,
                                                              truncate, w_init, recurrent_init)
    return _recurrent(_CELLS["gru"], spec, hidden, return_sequences, initial_state, truncate, w_init, recurrent_init,
                      None)


for _layer in (SimpleRNN, LSTM, GRU):
    _layer.__doc__ += _ARGS_DOC
del _layer
