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

**Final carry** (``return_state=True``): the output is ``(y, carry)``, the
carry after the last step, ``h`` (..., H) or ``(h, c)`` for the LSTM. An
encoder's final carry starts a decoder built with ``initial_state="input"``
(``(x, h, c)``), and the one-step cells (:func:`LSTMCell`, ...) continue it
token by token. The rule adds the carry's cotangent to the reverse scan's
starting ``dh`` (``dc``).

**Lengths** (``lengths_input=True``): the input is ``(x, lengths)`` (then
the initial state, if given) with integer ``lengths`` (...,): sequence b is
``x[b, :lengths[b]]``, padded on the right. At a step ``t >= lengths[b]``
the carry passes through unchanged and the output is zero, so the final
carry (and the output with ``return_sequences=False``) is the state at each
sequence's own end; a length of 0 (or less) keeps the initial state, one
beyond T uses every step. With ``m_t = [t < lengths]`` the forward is
``carry_t = m_t cell(carry_{t-1}) + (1 - m_t) carry_{t-1}``, ``y_t = m_t h_t``,
so the rule at step t runs the cell's rule on ``m_t dcarry_t`` and passes
``(1 - m_t) dcarry_t`` straight through. ``lengths`` gets no cotangent
(``None``).

Without lengths, padded sequences still work: the state at a valid step
never depends on later (padded) steps, so pad on the right and pick each
sequence's state at its last valid step with
:func:`jaxnets.layers.SequencePool` ``("last")``.

**Dtypes**: params and input are promoted together (float32 params with
float64 input run in float64, as :func:`jaxnets.layers.Dense` does), the
initial state (learned or given) included; a given initial state's
cotangent comes back in its own dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxnets import _checks
from jaxnets import initializers as inits
from jaxnets.layers import _util
from jaxnets.layers._taped import build_taped
from jaxnets.layers.core import Layer

__all__ = ["SimpleRNN", "LSTM", "GRU", "SimpleRNNCell", "LSTMCell", "GRUCell"]

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
    state: tuple[Any, ...]  # names of the carried arrays: ("h",) or ("h", "c")
    step: Callable[..., Any]
    step_back: Callable[..., Any]
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


def _carry_value(cell: _Cell, parts: tuple[Any, ...]):
    """The public form of a carry: ``h`` for one array, ``(h, c)`` for the LSTM."""
    return parts[0] if len(cell.state) == 1 else tuple(parts)


def _carry_parts(cell: _Cell, carry, what: str, spec: str) -> tuple[Any, ...]:
    """``h`` or ``(h, c)`` as a tuple of arrays, or an error naming what was received."""
    if len(cell.state) == 1:
        return (carry,)
    if not isinstance(carry, (tuple, list)) or len(carry) != len(cell.state):
        got = f"a tuple of {len(carry)}" if isinstance(carry, (tuple, list)) else f"one {type(carry).__name__}"
        raise ValueError(f"{spec}: {what} must be the pair (h, c), got {got}")
    return tuple(carry)


def _recurrent(cell: _Cell, spec: str, hidden: int, return_sequences: bool, initial_state: str,
               truncate: int | None, w_init, recurrent_init, b_init, return_state: bool = False,
               lengths_input: bool = False) -> Layer:
    g = cell.gates
    with_input = initial_state == "input"
    names = (("x",) + (("lengths",) if lengths_input else ())
             + (tuple(f"{s}0" for s in cell.state) if with_input else ()))
    arity = len(names)

    def split_input(x: Any) -> tuple[Any, Any, Any]:
        """``x`` -> ``(x, lengths or None, initial carry parts or None)``."""
        if arity == 1:
            return x, None, None
        if not isinstance(x, (tuple, list)) or len(x) != arity:
            got = f"a tuple of {len(x)}" if isinstance(x, (tuple, list)) else f"one {type(x).__name__}"
            raise ValueError(f"{spec} expects the input ({', '.join(names)}), got {got}")
        rest = tuple(x[1:])
        lengths = rest[0] if lengths_input else None
        given = (rest[1:] if lengths_input else rest) if with_input else None
        return x[0], lengths, given

    def check_shape(input_shape):
        if arity > 1 and not (isinstance(input_shape, (tuple, list)) and len(input_shape) == arity
                              and all(isinstance(s, (tuple, list)) for s in input_shape)):
            raise ValueError(f"{spec} expects the input ({', '.join(names)}), so input_shape must be a tuple of "
                             f"{arity} shapes, got {input_shape!r}")
        shape = input_shape[0] if arity > 1 else input_shape
        if len(shape) < 2:
            raise ValueError(f"{spec} expects x of shape (..., time, features), got {tuple(shape)}")
        if shape[-2] == 0:
            raise ValueError(f"{spec}: sequences must not be empty, got x of shape {tuple(shape)}")
        for name, s in zip(names[1:], input_shape[1:] if arity > 1 else ()):
            want = tuple(shape[:-2]) + (() if name == "lengths" else (hidden,))
            if len(s) != len(want) or any(a != b and -1 not in (a, b) for a, b in zip(s, want)):
                what = "x's leading axes" if name == "lengths" else "x's leading axes, hidden"
                raise ValueError(f"{spec}: {name} must have shape {want} ({what}), got {tuple(s)}")

    def init(key, input_shape):
        shape = input_shape[0] if arity > 1 else input_shape
        d = _util.check_last_dim(shape, spec)
        params = _cell_params(cell, key, d, hidden, w_init, recurrent_init, b_init)
        if initial_state == "learned":
            for s in cell.state:
                params[f"{s}0"] = jnp.zeros((hidden,), jnp.float32)
        out = tuple(shape[:-1]) + (hidden,) if return_sequences else tuple(shape[:-2]) + (hidden,)
        if return_state:
            h_shape = tuple(shape[:-2]) + (hidden,)
            out = (out, _carry_value(cell, (h_shape,) * len(cell.state)))
        return out, params

    def forward(params, x):
        x, lengths, given = split_input(x)
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
        zx = _util.rows_matmul(xs, params["wx"]) + _bias(cell, params)  # (T, B, G H): every step's input projection at once
        dtype = jnp.result_type(zx, params["wh"])  # the carry's dtype: x and params promoted, as Dense does
        zx = zx.astype(dtype)
        if with_input:
            carry0 = []
            for name, a in zip(names[-len(cell.state):], given):
                _util.check_input(a, spec, min_rank=1)
                if tuple(a.shape) != tuple(lead) + (hidden,):
                    raise ValueError(f"{spec}: {name} must have shape {tuple(lead) + (hidden,)} (x's leading axes, "
                                     f"hidden), got {tuple(a.shape)}")
                carry0.append(a.reshape(b_size, hidden).astype(dtype))
            carry0 = tuple(carry0)
        elif initial_state == "learned":
            carry0 = tuple(jnp.broadcast_to(params[f"{s}0"].astype(dtype), (b_size, hidden)) for s in cell.state)
        else:
            carry0 = tuple(jnp.zeros((b_size, hidden), dtype) for _ in cell.state)
        lens = None
        if lengths_input:
            _util.check_input(lengths, spec, min_rank=0, dtype="integer")
            if tuple(lengths.shape) != tuple(lead):
                raise ValueError(f"{spec}: lengths must have shape {tuple(lead)} (x's leading axes), "
                                 f"got {tuple(lengths.shape)}")
            lens = lengths.reshape(b_size).astype(jnp.int32)  # compared with the step index

        def body(carry, inputs):
            zx_t, t = inputs
            if truncate is not None:
                cut = _cut(t, truncate)
                carry = tuple(jnp.where(cut, lax.stop_gradient(a), a) for a in carry)
            new, h, saved = cell.step(params, carry, zx_t)
            if lens is not None:  # past a sequence's end the carry stays, the output is zero
                valid = (t < lens)[:, None]
                new = tuple(jnp.where(valid, a, b) for a, b in zip(new, carry))
                h = jnp.where(valid, h, jnp.zeros_like(h))
            return new, (h, saved)

        final, (hs, saved) = lax.scan(body, carry0, (zx, jnp.arange(t_len, dtype=jnp.int32)))  # hs (T, B, H)
        if return_sequences:
            y = jnp.swapaxes(hs, 0, 1).reshape(tuple(lead) + (t_len, hidden))
        else:
            y = final[0].reshape(tuple(lead) + (hidden,))  # the state at each sequence's end
        if return_state:
            y = (y, _carry_value(cell, tuple(a.reshape(tuple(lead) + (hidden,)) for a in final)))
        return y, {"x": x, "saved": saved, "lens": lens, "given": given}

    def backward(params, tape, y_bar):
        x, saved, lens, given = tape["x"], tape["saved"], tape["lens"], tape["given"]
        lead, (t_len, d) = x.shape[:-2], x.shape[-2:]
        b_size = saved[0].shape[1]
        xs = jnp.swapaxes(x.reshape((b_size, t_len, d)), 0, 1)  # (T, B, D) as in the forward
        dtype = saved[0].dtype
        carry_bar = None
        if return_state:
            y_bar, carry_bar = y_bar
            carry_bar = _carry_parts(cell, carry_bar, "the final carry's cotangent", spec)
        dcarry = [jnp.zeros((b_size, hidden), dtype) for _ in cell.state]  # the cotangent of the final carry
        if carry_bar is not None:
            dcarry = [z if a is None else z + a.reshape(b_size, hidden).astype(dtype) for z, a in zip(dcarry, carry_bar)]
        if return_sequences and y_bar is not None:
            dys = jnp.swapaxes(y_bar.reshape(b_size, t_len, hidden), 0, 1).astype(dtype)  # (T, B, H)
        else:
            dys = jnp.zeros((t_len, b_size, hidden), dtype)
            if y_bar is not None:  # the output is the final h
                dcarry[0] = dcarry[0] + y_bar.reshape(b_size, hidden).astype(dtype)

        def body(dcarry, inputs):
            dy, saved_t, t = inputs
            dnew = (dcarry[0] + dy,) + dcarry[1:]  # the output's and the future's cotangents add
            if lens is not None:  # a step past the end passed its carry through unchanged and output zero
                valid = (t < lens)[:, None]
                dnew = tuple(jnp.where(valid, a, jnp.zeros_like(a)) for a in dnew)
            dprev, dzx, dzh = cell.step_back(params, saved_t, dnew)
            if lens is not None:
                dprev = tuple(p + jnp.where(valid, jnp.zeros_like(a), a) for p, a in zip(dprev, dcarry))
            if truncate is not None:
                keep = jnp.logical_not(_cut(t, truncate))
                dprev = tuple(jnp.where(keep, a, jnp.zeros_like(a)) for a in dprev)
            return dprev, (dzx, dzh)

        steps = jnp.arange(t_len, dtype=jnp.int32)
        d_carry0, (dzx, dzh) = lax.scan(body, tuple(dcarry), (dys, saved, steps), reverse=True)
        h_prev = saved[0]  # (T, B, H): the state each step received
        rows = lambda a: a.reshape(t_len * b_size, a.shape[-1])  # noqa: E731  (T, B, n) -> (T B, n)
        grads = _cell_grads(cell, rows(xs), rows(h_prev), rows(dzx), rows(dzh))
        x_bar = jnp.swapaxes(dzx @ params["wx"].T, 0, 1).reshape(tuple(lead) + (t_len, d))  # (..., T, D)
        if initial_state == "learned":
            for s, dc in zip(cell.state, d_carry0):
                grads[f"{s}0"] = jnp.sum(dc, axis=0, dtype=_util.accumulation_dtype(dc.dtype))
        if arity == 1:
            return grads, x_bar
        x_bars = (x_bar,) + ((None,) if lengths_input else ())
        if with_input:
            x_bars += tuple(dc.reshape(tuple(lead) + (hidden,)).astype(a.dtype) for dc, a in zip(d_carry0, given))
        return grads, x_bars

    return build_taped(cell.name, spec, init, forward, backward, check_shape)


def _cell_params(cell: _Cell, key, d: int, hidden: int, w_init, recurrent_init, b_init) -> dict[str, Any]:
    """``{"wx": (D, G H), "wh": (H, G H), "b": (G H,)}`` (the GRU: ``"bx"``, ``"bh"``), shared by layer and cell."""
    g = cell.gates
    k_x, k_h = jax.random.split(key)
    wh = jnp.concatenate([recurrent_init(k, (hidden, hidden), jnp.float32) for k in jax.random.split(k_h, g)], axis=1)
    params = {"wx": w_init(k_x, (d, g * hidden), jnp.float32), "wh": wh}
    b = jnp.zeros((g * hidden,), jnp.float32) if b_init is None else b_init(hidden)
    if cell.separate_hidden_bias:
        params["bx"], params["bh"] = b, jnp.zeros((g * hidden,), jnp.float32)
    else:
        params["b"] = b
    return params


def _bias(cell: _Cell, params) -> jax.Array:
    return params["bx"] if cell.separate_hidden_bias else params["b"]


def _cell_grads(cell: _Cell, x_rows, h_rows, dzx_rows, dzh_rows) -> dict[str, Any]:
    """``W_x_bar = X^T dZ_x``, ``W_h_bar = H_prev^T dZ_h``, the biases' the sums (float32 for 16-bit dtypes)."""
    grads = {"wx": _util.batch_matmul_t(x_rows, dzx_rows), "wh": _util.batch_matmul_t(h_rows, dzh_rows)}
    if cell.separate_hidden_bias:
        grads["bx"], grads["bh"] = _util.sum_leading(dzx_rows), _util.sum_leading(dzh_rows)
    else:
        grads["b"] = _util.sum_leading(dzx_rows)
    return grads


def _recurrent_cell(cell: _Cell, spec: str, hidden: int, w_init, recurrent_init, b_init) -> Layer:
    """One step of a cell as a layer: ``(carry, x_t) -> (carry, y_t)``, with the layer's params."""
    parts = len(cell.state)

    def split(inputs, what):
        if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
            got = f"a tuple of {len(inputs)}" if isinstance(inputs, (tuple, list)) else f"one {type(inputs).__name__}"
            raise ValueError(f"{spec} expects the {what} (carry, x_t), got {got}")
        return inputs[0], inputs[1]

    def check_shape(input_shape):
        carry, x = split(input_shape, "input_shape")
        carry = (carry,) if parts == 1 else carry
        if parts > 1 and not (isinstance(carry, (tuple, list)) and len(carry) == parts
                              and all(isinstance(s, (tuple, list)) for s in carry)):
            raise ValueError(f"{spec}: the carry's input_shape must be the pair (h, c) of shapes, got {carry!r}")
        if len(x) < 1:
            raise ValueError(f"{spec} expects x_t of shape (..., features), got {tuple(x)}")
        want = tuple(x[:-1]) + (hidden,)
        for name, s in zip(cell.state, carry):
            if len(s) != len(want) or any(a != b and -1 not in (a, b) for a, b in zip(s, want)):
                raise ValueError(f"{spec}: {name} must have shape {want} (x_t's leading axes, hidden), got {tuple(s)}")

    def init(key, input_shape):
        carry, x = input_shape
        d = _util.check_last_dim(x, spec)
        params = _cell_params(cell, key, d, hidden, w_init, recurrent_init, b_init)
        h_shape = tuple(x[:-1]) + (hidden,)
        return (_carry_value(cell, (h_shape,) * parts), h_shape), params

    def forward(params, inputs):
        carry, x = split(inputs, "input")
        carry = _carry_parts(cell, carry, "the carry", spec)
        _util.check_input(x, spec, min_rank=1)
        if x.shape[-1] != params["wx"].shape[0]:
            raise ValueError(f"{spec} expects x_t with {params['wx'].shape[0]} features (last axis), "
                             f"got {tuple(x.shape)}")
        lead = x.shape[:-1]
        b_size = 1
        for n in lead:
            b_size *= n
        for name, a in zip(cell.state, carry):
            _util.check_input(a, spec, min_rank=1)
            if tuple(a.shape) != tuple(lead) + (hidden,):
                raise ValueError(f"{spec}: {name} must have shape {tuple(lead) + (hidden,)} (x_t's leading axes, "
                                 f"hidden), got {tuple(a.shape)}")
        xr = x.reshape(b_size, x.shape[-1])  # (B, D)
        zx = xr @ params["wx"] + _bias(cell, params)  # (B, G H)
        dtype = jnp.result_type(zx, params["wh"])
        zx = zx.astype(dtype)
        carry_in = tuple(a.reshape(b_size, hidden).astype(dtype) for a in carry)
        new, h, saved = cell.step(params, carry_in, zx)
        out = (_carry_value(cell, tuple(a.reshape(tuple(lead) + (hidden,)) for a in new)),
               h.reshape(tuple(lead) + (hidden,)))
        return out, {"x": x, "saved": saved, "carry": carry}

    def backward(params, tape, y_bar):
        x, saved, carry = tape["x"], tape["saved"], tape["carry"]
        lead = x.shape[:-1]
        b_size = saved[0].shape[0]
        xr = x.reshape(b_size, x.shape[-1])  # (B, D)
        dtype = saved[0].dtype
        carry_bar, h_bar = y_bar
        carry_bar = _carry_parts(cell, carry_bar, "the carry's cotangent", spec)
        dnew = [jnp.zeros((b_size, hidden), dtype) if a is None else a.reshape(b_size, hidden).astype(dtype)
                for a in carry_bar]
        if h_bar is not None:  # y_t is the new h: its cotangent adds to the carry's
            dnew[0] = dnew[0] + h_bar.reshape(b_size, hidden).astype(dtype)
        dprev, dzx, dzh = cell.step_back(params, saved, tuple(dnew))
        grads = _cell_grads(cell, xr, saved[0], dzx, dzh)
        x_bar = (dzx @ params["wx"].T).reshape(tuple(lead) + (xr.shape[-1],))
        carry_bar = tuple(dc.reshape(tuple(lead) + (hidden,)).astype(a.dtype) for dc, a in zip(dprev, carry))
        return grads, (_carry_value(cell, carry_bar), x_bar)

    return build_taped(f"{cell.name}_cell", spec, init, forward, backward, check_shape)


def _options(cell_name: str, hidden, return_sequences, initial_state, truncate, w_init, recurrent_init,
             return_state=False, lengths_input=False):
    hidden = _checks.positive_int(hidden, "hidden")
    if initial_state not in _INITIAL:
        raise ValueError(f"{cell_name}: initial_state must be one of {_INITIAL}, got {initial_state!r}")
    truncate = None if truncate is None else _checks.positive_int(truncate, "truncate")
    for flag, value in (("return_sequences", return_sequences), ("return_state", return_state),
                        ("lengths_input", lengths_input)):
        if not isinstance(value, bool):
            raise TypeError(f"{cell_name}: {flag} must be a bool, got {value!r}")
    w_init = _util.check_initializer(w_init or inits.lecun_normal(), "w_init")
    recurrent_init = _util.check_initializer(recurrent_init or inits.orthogonal(), "recurrent_init")
    opts = [str(hidden), "" if return_sequences else "return_sequences=False",
            "" if initial_state == "zeros" else f"initial_state={initial_state!r}",
            "" if truncate is None else f"truncate={truncate}",
            "return_state=True" if return_state else "", "lengths_input=True" if lengths_input else ""]
    return hidden, truncate, w_init, recurrent_init, f"{cell_name}({', '.join(o for o in opts if o)})"


_ARGS_DOC = """
    Args:
      hidden: H, the size of the hidden state.
      return_sequences: return every state (..., T, H); else the last (..., H)
        (with ``lengths_input``, the state at each sequence's own end).
      initial_state: ``"zeros"``, ``"learned"`` (params) or ``"input"`` (the
        input becomes a tuple; module docstring).
      truncate: cut backpropagation through the state every ``truncate``
        steps (module docstring); default: full BPTT.
      return_state: also return the final carry: the output becomes
        ``(y, carry)``, ``carry`` being ``h`` (..., H), or ``(h, c)`` for the
        LSTM (module docstring).
      lengths_input: the input carries per-example lengths (module
        docstring): ``(x, lengths)``, or ``(x, lengths, h0[, c0])``.
      w_init: initializer of ``W_x``; default ``lecun_normal()``.
      recurrent_init: initializer of each gate's (H, H) block of ``W_h``;
        default ``orthogonal()``.

    Raises:
      ValueError: empty sequences, an initial state or lengths of the wrong
        shape, a wrong input arity; naming the layer and the shapes.
      TypeError: non-integer lengths, a flag that is not a bool.
"""


def SimpleRNN(hidden: int, *, return_sequences: bool = True, initial_state: str = "zeros",
              truncate: int | None = None, return_state: bool = False, lengths_input: bool = False,
              w_init: inits.Initializer | None = None, recurrent_init: inits.Initializer | None = None) -> Layer:
    """Elman RNN: ``h_t = tanh(x_t W_x + h_{t-1} W_h + b)``.

    Rule per step: ``dz = dh (1 - h_t^2)``, ``dh_{t-1} = dz W_h^T``: the
    cotangent is multiplied by ``diag(1 - h^2) W_h^T`` at every step back, so
    it shrinks geometrically when that product's norm is below 1 (vanishing
    gradients; ``experiments/adding_problem.py`` shows it).

    Params: ``{"wx": (D, H), "wh": (H, H), "b": (H,)}`` (+ ``"h0"`` if learned).
    One step: :func:`SimpleRNNCell`, on the same params.
    """
    hidden, truncate, w_init, recurrent_init, spec = _options("SimpleRNN", hidden, return_sequences, initial_state,
                                                              truncate, w_init, recurrent_init, return_state,
                                                              lengths_input)
    return _recurrent(_CELLS["rnn"], spec, hidden, return_sequences, initial_state, truncate, w_init, recurrent_init,
                      None, return_state, lengths_input)


def _lstm_bias(forget_bias: float):
    forget_bias = _checks.finite_real(forget_bias, "forget_bias")

    def b_init(h):
        return jnp.zeros((4 * h,), jnp.float32).at[h:2 * h].set(forget_bias)

    return b_init


def LSTM(hidden: int, *, return_sequences: bool = True, initial_state: str = "zeros", truncate: int | None = None,
         return_state: bool = False, lengths_input: bool = False, forget_bias: float = 1.0,
         w_init: inits.Initializer | None = None, recurrent_init: inits.Initializer | None = None) -> Layer:
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
    input is ``(x, h0, c0)``. One step: :func:`LSTMCell`, on the same params.
    """
    hidden, truncate, w_init, recurrent_init, spec = _options("LSTM", hidden, return_sequences, initial_state,
                                                              truncate, w_init, recurrent_init, return_state,
                                                              lengths_input)
    return _recurrent(_CELLS["lstm"], spec, hidden, return_sequences, initial_state, truncate, w_init, recurrent_init,
                      _lstm_bias(forget_bias), return_state, lengths_input)


def GRU(hidden: int, *, return_sequences: bool = True, initial_state: str = "zeros", truncate: int | None = None,
        return_state: bool = False, lengths_input: bool = False, w_init: inits.Initializer | None = None,
        recurrent_init: inits.Initializer | None = None) -> Layer:
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
    order r, u, n (+ ``"h0"`` if learned). One step: :func:`GRUCell`.
    """
    hidden, truncate, w_init, recurrent_init, spec = _options("GRU", hidden, return_sequences, initial_state,
                                                              truncate, w_init, recurrent_init, return_state,
                                                              lengths_input)
    return _recurrent(_CELLS["gru"], spec, hidden, return_sequences, initial_state, truncate, w_init, recurrent_init,
                      None, return_state, lengths_input)


for _layer in (SimpleRNN, LSTM, GRU):
    _layer.__doc__ = (_layer.__doc__ or "") + _ARGS_DOC  # None under python -OO
del _layer


_CELL_DOC = """
    Input ``(carry, x_t)`` with ``x_t`` (..., D) and ``carry`` ``h`` (..., H)
    (``(h, c)`` for the LSTM); output ``(carry, y_t)`` with ``y_t = h_t``:
    ``cell.apply(params, (carry, x_t)) -> (carry, y_t)``, the step of
    ``lax.scan`` for autoregressive decoding. The params are the sequence
    layer's (built with the same ``hidden`` and features; without ``"h0"``/
    ``"c0"``), so a layer trained on whole sequences decodes one step at a
    time. Its rule is one step of the layer's: the carry's and ``y_t``'s
    cotangents add in ``dh``; it returns the cotangents of the params and of
    ``(carry, x_t)``. Params and input are promoted together, as in Dense.

    Args:
      hidden: H, the size of the hidden state.
      w_init, recurrent_init: as in the sequence layer.

    Raises:
      ValueError: a carry of the wrong shape or arity, x_t with the wrong
        number of features; naming the layer and the shapes.
"""


def _cell_options(name, hidden, w_init, recurrent_init):
    hidden = _checks.positive_int(hidden, "hidden")
    w_init = _util.check_initializer(w_init or inits.lecun_normal(), "w_init")
    recurrent_init = _util.check_initializer(recurrent_init or inits.orthogonal(), "recurrent_init")
    return hidden, w_init, recurrent_init, f"{name}({hidden})"


def SimpleRNNCell(hidden: int, *, w_init: inits.Initializer | None = None,
                  recurrent_init: inits.Initializer | None = None) -> Layer:
    """One step of :func:`SimpleRNN`: ``h_t = tanh(x_t W_x + h_{t-1} W_h + b)``.
    """
    hidden, w_init, recurrent_init, spec = _cell_options("SimpleRNNCell", hidden, w_init, recurrent_init)
    return _recurrent_cell(_CELLS["rnn"], spec, hidden, w_init, recurrent_init, None)


def LSTMCell(hidden: int, *, forget_bias: float = 1.0, w_init: inits.Initializer | None = None,
             recurrent_init: inits.Initializer | None = None) -> Layer:
    """One step of :func:`LSTM` (its equations and rule); the carry is ``(h, c)``.
    """
    hidden, w_init, recurrent_init, spec = _cell_options("LSTMCell", hidden, w_init, recurrent_init)
    return _recurrent_cell(_CELLS["lstm"], spec, hidden, w_init, recurrent_init, _lstm_bias(forget_bias))


def GRUCell(hidden: int, *, w_init: inits.Initializer | None = None,
            recurrent_init: inits.Initializer | None = None) -> Layer:
    """One step of :func:`GRU` (its equations and rule).
    """
    hidden, w_init, recurrent_init, spec = _cell_options("GRUCell", hidden, w_init, recurrent_init)
    return _recurrent_cell(_CELLS["gru"], spec, hidden, w_init, recurrent_init, None)


for _layer in (SimpleRNNCell, LSTMCell, GRUCell):
    _layer.__doc__ = (_layer.__doc__ or "") + _CELL_DOC  # None under python -OO
del _layer
