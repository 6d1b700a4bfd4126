"""The keywords ``fit`` had before 0.2, mapped onto callbacks and objects for one release, with a warning each.

========================================  ==================================================================
retired keyword                           now
========================================  ==================================================================
``hooks=[h]``                             ``callbacks=[h]`` (a plain function is still a callback)
``history_file=path``                     ``callbacks=[HistoryFile(path)]``
``checkpoint_dir=d, checkpoint_every=n,   ``callbacks=[jaxnets.checkpoint.Checkpoint(d, every=(n, "epochs"),
checkpoint_keep=k, checkpoint_best=m``    keep=k, best=m)]``
``progress=False``, ``verbose=True``      ``callbacks=[ProgressBar(enabled=False)]``, ``ProgressBar(lines=True)``
``precision=p, loss_scale=s``             ``precision=jaxnets.precision.MixedPrecision(p, loss_scale=s)``
``mesh=m, data_axis=a,                    ``placement=jaxnets.distributed.placement(m, axis=a, rule=r)``
param_sharding=r``
``train=data``                            ``data=data``
========================================  ==================================================================
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

from jaxnets import distributed
from jaxnets import precision as precision_module
from jaxnets.train.callbacks import Hook
from jaxnets.train.history_file import HistoryFile
from jaxnets.train.progress_bar import ProgressBar

__all__ = ["translate", "RETIRED", "register_checkpoint"]

#: ``checkpoint_dir=`` builds its callback through this, which :mod:`jaxnets.checkpoint` registers when it is imported
#: (``import jaxnets`` imports it): train/ itself never imports the checkpoint module, so no import circle forms.
_CHECKPOINT: dict[str, Any] = {}


def register_checkpoint(factory: Callable[..., Any]) -> None:
    """Called by :mod:`jaxnets.checkpoint`: ``factory(directory, every=, keep=, best=)`` builds its callback."""
    _CHECKPOINT["factory"] = factory

RETIRED = ("hooks", "history_file", "checkpoint_dir", "checkpoint_every", "checkpoint_keep", "checkpoint_best",
           "progress", "verbose", "loss_scale", "mesh", "data_axis", "param_sharding", "train")


def _warn(old: str, new: str) -> None:
    warnings.warn(f"fit({old}=...) is deprecated and will be removed in 0.3: use {new}", DeprecationWarning, stacklevel=4)


def translate(retired: dict[str, Any], *, data: Any, precision: Any, placement: Any, callbacks: Any,
              batch_size: int) -> tuple[Any, Any, Any, list[Any] | None]:
    """``(data, precision, placement, callbacks)`` with the retired keywords folded in; unknown keywords a TypeError."""
    unknown = sorted(set(retired) - set(RETIRED))
    if unknown:
        raise TypeError(f"fit() got unexpected keyword arguments {unknown}")
    callbacks = list(callbacks) if callbacks is not None else None
    extra: list[Any] = []
    if "train" in retired:
        _warn("train", "data=")
        data = retired.pop("train") if data is None else data
    if "hooks" in retired:
        _warn("hooks", "callbacks=[...]")
        hooks = retired.pop("hooks")
        extra += [Hook(h) for h in ([hooks] if callable(hooks) else list(hooks))]
    if "history_file" in retired:
        _warn("history_file", "callbacks=[jaxnets.train.HistoryFile(path)]")
        path = retired.pop("history_file")
        if path is not None:
            extra.append(HistoryFile(path))
    checkpoint_keys = {k: retired.pop(k) for k in ("checkpoint_dir", "checkpoint_every", "checkpoint_keep",
                                                   "checkpoint_best") if k in retired}
    if checkpoint_keys.get("checkpoint_dir") is not None:
        _warn("checkpoint_dir", "callbacks=[jaxnets.checkpoint.Checkpoint(directory, ...)]")
        if "factory" not in _CHECKPOINT:
            raise ImportError("checkpoint_dir= needs jaxnets.checkpoint: import jaxnets (or jaxnets.checkpoint) first")
        extra.append(_CHECKPOINT["factory"](checkpoint_keys["checkpoint_dir"],
                                            every=checkpoint_keys.get("checkpoint_every", 1),
                                            keep=checkpoint_keys.get("checkpoint_keep", 3),
                                            best=checkpoint_keys.get("checkpoint_best")))
    if "progress" in retired or "verbose" in retired:
        _warn("progress" if "progress" in retired else "verbose", "callbacks=[jaxnets.train.ProgressBar(...)]")
        bar, lines = bool(retired.pop("progress", True)), bool(retired.pop("verbose", False))
        extra.append(ProgressBar(bar=bar, lines=lines, enabled=bar or lines))
    if "loss_scale" in retired:
        _warn("loss_scale", "precision=jaxnets.precision.MixedPrecision(policy, loss_scale=...)")
        precision = precision_module.MixedPrecision(precision, loss_scale=retired.pop("loss_scale"))
    if any(k in retired for k in ("mesh", "data_axis", "param_sharding")):
        mesh, axis = retired.pop("mesh", None), retired.pop("data_axis", "data")
        rule = retired.pop("param_sharding", "replicated")
        if mesh is not None:
            _warn("mesh", "placement=jaxnets.distributed.placement(mesh, axis=..., rule=...)")
            placement = distributed.placement(mesh, axis=axis, rule=rule, batch_size=batch_size)
        elif rule != "replicated":
            raise TypeError(f"param_sharding={rule!r} needs a mesh: pass "
                            f"placement=jaxnets.distributed.placement(mesh, rule={rule!r})")
    if extra:
        has_bar = any(isinstance(c, ProgressBar) for c in extra)
        callbacks = (callbacks if callbacks is not None else ([] if has_bar else [ProgressBar()])) + extra
    return data, precision, placement, callbacks
