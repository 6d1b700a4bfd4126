"""An exponential moving average of params, updated inside the compiled step (diffusion models, GANs, teachers)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from jaxnets import _checks, _inputs

__all__ = ["EmaState", "ema_state", "with_ema"]


class EmaState(NamedTuple):
    """A state and the moving average of part of it. ``key`` and ``step`` are the inner state's (for the loop)."""

    state: Any
    ema: Any

    @property
    def key(self) -> jax.Array:
        return self.state.key

    @property
    def step(self) -> jax.Array:
        return self.state.step


def _params(state: Any) -> Any:
    return state.params


def ema_state(state: Any, of: Callable[[Any], Any] = _params) -> EmaState:
    """``EmaState(state, copy of of(state))``: the average starts at the current params."""
    _check_of(of)
    if of is _params and not hasattr(state, "params"):
        raise TypeError(f"state must have params (a TrainState), or pass of= to pick what is averaged, got "
                        f"{type(state).__name__}")
    averaged = of(state)
    _inputs.check_floating_leaves(averaged, "of(state)", empty="of(state) holds no arrays to average",
                                  why="dtype (a moving average of integers would be truncated)")
    return EmaState(state, jax.tree_util.tree_map(jnp.array, averaged))


def _check_of(of: Any) -> None:
    if not callable(of):
        raise TypeError(f"of must be callable as of(state) -> the pytree to average (default: state.params), got {of!r}")


def with_ema(step: Callable[..., Any], decay: float, *, of: Callable[[Any], Any] = _params) -> Callable[..., Any]:
    """``step`` over an :class:`EmaState`: after each step, ``ema <- decay ema + (1 - decay) of(state)``.

    The update runs inside the same compiled step (fused with it), not on the
    host between calls. ``of`` picks what is averaged (default: ``state.params``;
    for a GAN's dict of states, ``lambda s: s["generator"].params``).

    Args:
      step: pure ``(state, batch) -> (state, metrics)``.
      decay: in ``[0, 1)``: the weight of the old average (0.999 is common).
    """
    decay = _checks.positive_float(decay, "decay", allow_zero=True)
    if decay >= 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay}")
    if not callable(step):
        raise TypeError(f"step must be callable as step(state, batch) -> (state, metrics), got {step!r}")
    _check_of(of)

    def wrapped(state: EmaState, batch: Any):
        if not isinstance(state, EmaState):
            raise TypeError(f"state must be an EmaState (wrap the state with jaxnets.train.ema_state(state)), got "
                            f"{type(state).__name__}")
        inner, metrics = step(state.state, batch)
        ema = jax.tree_util.tree_map(lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), state.ema, of(inner))
        return EmaState(inner, ema), metrics

    return wrapped
