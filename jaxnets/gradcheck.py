"""Check a gradient function against ``jax.grad`` and against finite differences.

:func:`check_grads` returns a :class:`GradReport`: for every leaf of the
params pytree (by path, e.g. ``dense_0/w``), how far the gradient function
is from ``jax.grad`` of the loss in float32 and in float64, and how far both
are from central finite differences of the loss in float64. Printing the
report gives a table; :func:`assert_grads_close` raises with the worst
leaves, for tests.

Errors are relative in norm: ``||g - g_ref||_2 / ||g_ref||_2`` over a leaf,
independent of its size; a leaf also passes if its largest absolute error is
within ``atol`` (for gradients that are 0 analytically).

Finite differences run in float64 (x64 is switched on for the check and
restored after): ``(L(p + h d) - L(p - h d)) / 2h`` with
``h = eps^(1/3) max(1, max|p|)`` (about 6e-6 for unit-sized params), along
every basis direction of a small leaf (at most ``max_full`` entries) and
along ``directions`` random unit directions of a larger one. Matrix products
run at full precision during the check, so TF32 or bfloat16 defaults on
GPU/TPU cannot decide its outcome.
"""

from __future__ import annotations

import dataclasses
import numbers
import re
from typing import Any, Callable, Mapping, Sequence, cast

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets import _checks

__all__ = ["LeafReport", "GradReport", "check_grads", "assert_grads_close", "check_layer", "dtype_tolerance", "DEFAULT_TOLERANCES", "FD_RTOL", "FD_ATOL"]

# dtype -> (rtol, atol) for the comparison with jax.grad
DEFAULT_TOLERANCES = {"float32": (1e-5, 1e-7), "float64": (1e-12, 1e-15)}
FD_RTOL = 1e-6  # central differences in float64 are good to about 1e-9 relative on smooth losses
FD_ATOL = 1e-8  # their noise, eps |L| / h, is about 1e-11 |L|: a gradient that is 0 passes on this


LOW_PRECISION = ("bfloat16", "float16")


def dtype_tolerance(dtype: Any, reduction: int) -> tuple[float, float]:
    """``(rtol, atol)`` for a gradient computed in a low-precision ``dtype``, from its unit roundoff.

    Every rounded operation moves a value by at most ``u = eps / 2`` relative;
    a layer's rule is a few such operations deep, and a sum of ``n`` terms
    rounded pairwise adds ``log2(n)`` more. So ``rtol = u (8 + 2 log2(n))``
    with ``n`` the largest reduction (the number of entries of the largest
    input): for bfloat16 (``u = 2^-8``) 0.078 at ``n = 64``, for float16
    (``u = 2^-11``) 0.0098. A wrong rule misses by order 1. ``atol`` is
    ``u`` (a gradient that is 0 analytically may come out as rounding noise).
    """
    try:
        dtype = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a floating dtype such as 'bfloat16', got {dtype!r}") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype such as 'bfloat16', got {dtype.name}")
    if isinstance(reduction, bool) or not isinstance(reduction, (int, np.integer)) or reduction < 1:
        raise ValueError(f"reduction must be a positive int (the number of terms summed), got {reduction!r}")
    unit = float(jnp.finfo(dtype).eps) / 2
    return unit * (8 + 2 * float(np.log2(max(int(reduction), 2)))), unit


@dataclasses.dataclass(frozen=True)
class LeafReport:
    """One leaf's comparison. Errors are ``nan`` where a comparison could not run."""

    path: str
    shape: tuple[int, ...]
    errors: dict[str, tuple[float, float]]  # name -> (max abs error, relative error), e.g. "float32 vs jax.grad"
    fd_method: str
    problem: str  # "" when the leaf could be compared; else what is wrong (missing, wrong shape, ...)
    passed: bool


@dataclasses.dataclass(frozen=True)
class GradReport:
    """Per-leaf results of :func:`check_grads`; ``passed`` when every leaf passed."""

    leaves: list[LeafReport]
    tolerances: dict[str, Any]
    notes: tuple[str, ...] = ()  # why a column does not count, e.g. a layer that truncates its gradient by design

    @property
    def passed(self) -> bool:
        return all(leaf.passed for leaf in self.leaves)

    def max_relative_error(self, column: str) -> float:
        """The largest relative error in a column, over leaves whose reference is not 0
        (a leaf within ``atol`` of a zero gradient has no meaningful relative error)."""
        rtol, atol = self.tolerances.get(column, (FD_RTOL, 0.0))
        values = [rel for leaf in self.leaves if column in leaf.errors
                  for abs_err, rel in [leaf.errors[column]] if not (rel > rtol and abs_err <= atol)]
        return float(np.nanmax(values)) if values else float("nan")

    def worst(self, n: int = 5) -> list[LeafReport]:
        """The ``n`` leaves that failed (or came closest), worst first."""

        def badness(leaf):
            if leaf.problem:
                return float("inf")
            ratios = []
            for column, (abs_err, rel_err) in leaf.errors.items():
                rtol = self.tolerances.get(column, (FD_RTOL, 0.0))[0]
                ratios.append(rel_err / rtol if np.isfinite(rel_err) else float("inf"))
            return max(ratios, default=0.0)

        return sorted(self.leaves, key=badness, reverse=True)[:n]

    def table(self, leaves: Sequence[LeafReport] | None = None) -> str:
        leaves = self.leaves if leaves is None else leaves
        columns = list(dict.fromkeys(c for leaf in leaves for c in leaf.errors))
        header = ["leaf", "shape"] + [f"{c} (rel)" for c in columns] + ["finite differences", "ok"]  # noqa: E501
        rows = [header]
        for leaf in leaves:
            cells = [leaf.path, str(leaf.shape)]
            for c in columns:
                if c not in leaf.errors:
                    cells.append("-")
                    continue
                abs_err, rel_err = leaf.errors[c]
                rtol, atol = self.tolerances.get(c, (FD_RTOL, 0.0))
                # A gradient that is 0 analytically has no meaningful relative error: show the absolute one.
                cells.append(f"abs {abs_err:.0e}" if rel_err > rtol and abs_err <= atol else f"{rel_err:.1e}")
            cells += [leaf.fd_method, "yes" if leaf.passed else f"NO {leaf.problem}".strip()]
            rows.append(cells)
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __str__(self) -> str:
        verdict = "all leaves passed" if self.passed else f"{sum(not leaf.passed for leaf in self.leaves)} leaves FAILED"
        notes = "".join(f"\nnote: {note}" for note in self.notes)
        return f"GradReport: {verdict}\n{self.table()}{notes}"


def _path(key_path) -> str:
    return jax.tree_util.keystr(key_path, simple=True, separator="/") or "(root)"


def _leaves_by_path(tree) -> dict[str, Any]:
    return {_path(kp): leaf for kp, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _cast(tree, dtype):
    def cast(a):
        if isinstance(a, (jax.Array, np.ndarray)) and jnp.issubdtype(a.dtype, jnp.floating):
            return jnp.asarray(a, dtype)
        if isinstance(a, float):
            return jnp.asarray(a, dtype)
        return a

    return jax.tree_util.tree_map(cast, tree)


def _errors(g, ref) -> tuple[float, float]:
    g, ref = np.asarray(g, np.float64), np.asarray(ref, np.float64)
    diff = g - ref
    abs_err = float(np.max(np.abs(diff))) if diff.size else 0.0
    ref_norm = float(np.linalg.norm(ref))
    rel = float(np.linalg.norm(diff)) / ref_norm if ref_norm > 0 else float(np.linalg.norm(diff))
    return abs_err, rel


def _scalar_loss(loss_fn, params, args):
    """The loss's output shape, traced abstractly (nothing runs: a model's loss is not run op by op)."""
    value = jax.eval_shape(loss_fn, params, *args)
    shape = getattr(value, "shape", None)
    if shape != ():
        raise ValueError(f"loss_fn must return a scalar, got {'shape ' + str(shape) if shape is not None else type(value).__name__}")
    return value


def _finite_difference_projections(loss_fn, params, args, directions, max_full, keys):
    """Central differences of the loss along unit directions in each leaf, from one compiled program.

    Leaves of at most ``max_full`` entries are probed along every basis vector,
    larger ones along ``directions`` random unit vectors. All probes run in
    one ``lax.scan``: probe ``r`` moves the params, flattened into one vector,
    by ``h_r v_r`` written at its leaf's offset, so the loss is traced and
    compiled once however many leaves there are.

    Returns:
      ``{path: (basis (D, n), fd values (D,), method)}``.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths, leaves = [_path(kp) for kp, _ in flat], [v for _, v in flat]
    sizes = [leaf.size for leaf in leaves]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    width = max(sizes) if sizes else 0
    rows, owner, steps, methods = [], [], [], {}
    for i, (leaf, key) in enumerate(zip(leaves, keys)):
        n = leaf.size
        if n <= max_full:
            basis, methods[paths[i]] = jnp.eye(n, dtype=leaf.dtype), "full"
        else:
            basis = jax.random.normal(key, (directions, n), leaf.dtype)
            basis, methods[paths[i]] = basis / jnp.linalg.norm(basis, axis=1, keepdims=True), f"{directions} directions"
        h = float(np.finfo(np.float64).eps ** (1.0 / 3.0) * max(1.0, float(jnp.max(jnp.abs(leaf))) if n else 1.0))
        rows.append(jnp.pad(basis, ((0, 0), (0, width - n))))
        owner += [i] * basis.shape[0]
        steps += [h] * basis.shape[0]
    if not rows:
        return {}
    probes = (jnp.concatenate(rows), jnp.asarray(starts[np.asarray(owner)], jnp.int32), jnp.asarray(steps, jnp.float64))

    @jax.jit
    def run(leaves, args, probes):
        vector = jnp.concatenate([leaf.reshape(-1) for leaf in leaves])

        def loss_at(offset):
            moved = vector + offset
            parts = [moved[starts[i]:starts[i + 1]].reshape(leaf.shape) for i, leaf in enumerate(leaves)]
            return loss_fn(jax.tree_util.tree_unflatten(treedef, parts), *args)

        def probe(_, item):
            v, start, h = item
            offset = jax.lax.dynamic_update_slice(jnp.zeros(vector.size + width, vector.dtype), h * v, (start,))
            offset = offset[: vector.size]  # v's padding is zeros: nothing spills into the next leaf
            return None, (loss_at(offset) - loss_at(-offset)) / (2 * h)

        return jax.lax.scan(probe, None, probes)[1]

    fd = run(leaves, args, probes)
    out, row = {}, 0
    for i, path in enumerate(paths):
        count = rows[i].shape[0]
        out[path] = (rows[i][:, : sizes[i]], fd[row:row + count], methods[path])
        row += count
    return out


def _nothing(why: str) -> ValueError:
    return ValueError(_checks.NOTHING_TO_CHECK.format(what="this gradient check", why=why))


def _check_arguments(grad_fn, loss_fn, params, dtypes, finite_differences, tolerances, fd_rtol, fd_atol,
                     directions, max_full, seed) -> tuple[Any, ...]:
    """Every argument of :func:`check_grads` checked before anything is traced; returns the dtype names and
    the numbers as Python values. A check that would compare nothing is a ValueError, never a passing report."""
    _checks.callable_arg(grad_fn, "grad_fn", "grad_fn(params, *args) -> grads")
    _checks.callable_arg(loss_fn, "loss_fn", "loss_fn(params, *args) -> scalar")
    finite_differences = _checks.boolean(finite_differences, "finite_differences")
    if isinstance(dtypes, (str, bytes)) or not isinstance(dtypes, Sequence):
        raise TypeError(f"dtypes must be a sequence of floating dtypes such as ('float32', 'float64'), got {dtypes!r}")
    names = tuple(_checks.dtype_like(d, f"dtypes[{i}]", floating_only=True).name for i, d in enumerate(dtypes))
    if not names and not finite_differences:
        raise _nothing("dtypes=() and finite_differences=False leave no comparison; give dtypes=('float32', ...) "
                       "or finite_differences=True")
    sizes = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        where = f"params{jax.tree_util.keystr(path)}"
        if isinstance(leaf, float):
            sizes.append(1)
            continue
        if not isinstance(leaf, (jax.Array, np.ndarray)):
            raise TypeError(f"{where} must be an array of floats, got {type(leaf).__name__}")
        _checks.floating(leaf, where)
        sizes.append(int(leaf.size))
    if sum(sizes) == 0:
        raise _nothing(f"params has no entries to differentiate ({len(sizes)} leaves, all empty)" if sizes
                       else "params has no leaves")
    fd_rtol = _checks.positive_float(fd_rtol, "fd_rtol")
    fd_atol = _checks.positive_float(fd_atol, "fd_atol", allow_zero=True)
    directions = _checks.positive_int(directions, "directions")
    if isinstance(max_full, bool) or not isinstance(max_full, numbers.Integral) or max_full < 0:
        raise (TypeError if not isinstance(max_full, numbers.Integral) or isinstance(max_full, bool) else ValueError)(
            f"max_full must be an int >= 0 (leaves up to this size are checked entry by entry), got {max_full!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {seed!r} of type {type(seed).__name__}")
    if tolerances is not None:
        if not isinstance(tolerances, Mapping):
            raise TypeError(f"tolerances must be a dict {{dtype name: (rtol, atol)}}, got {tolerances!r}")
        checked = {}
        for name, pair in tolerances.items():
            dtype = _checks.dtype_like(name, f"tolerances key {name!r}", floating_only=True).name
            if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
                raise TypeError(f"tolerances[{name!r}] must be a pair (rtol, atol), got {pair!r}")
            checked[dtype] = (_checks.positive_float(pair[0], f"tolerances[{name!r}] rtol", allow_zero=True),
                              _checks.positive_float(pair[1], f"tolerances[{name!r}] atol", allow_zero=True))
        tolerances = checked
    return names, finite_differences, tolerances, fd_rtol, fd_atol, directions, int(max_full), int(seed)


def check_grads(
    grad_fn: Callable[..., Any],
    loss_fn: Callable[..., Any],
    params: Any,
    *args: Any,
    dtypes: Sequence[str] = ("float32", "float64"),
    finite_differences: bool = True,
    tolerances: dict[str, Any] | None = None,
    fd_rtol: float = FD_RTOL,
    fd_atol: float = FD_ATOL,
    directions: int = 8,
    max_full: int = 64,
    seed: int = 0,
) -> GradReport:
    """Compare ``grad_fn(params, *args)`` with ``jax.grad(loss_fn)(params, *args)`` and finite differences.

    Args:
      grad_fn: the gradient function under test, ``(params, *args) -> grads``.
      loss_fn: the scalar loss it should be the gradient of, ``(params, *args) -> ()``.
      params: the point to check at (any pytree of float arrays).
      *args: further arguments of both (inputs, targets, ...); their
        floating leaves are cast along with params.
      dtypes: precisions to compare in (float64 runs with x64 switched on).
      finite_differences: also compare both gradients with central
        differences of ``loss_fn`` in float64.
      tolerances: ``{dtype: (rtol, atol)}``; default :data:`DEFAULT_TOLERANCES`.
      fd_rtol, fd_atol: tolerances against finite differences (``fd_atol``
        bounds the largest absolute error of a directional derivative).
      directions: random directions for leaves larger than ``max_full``.
      max_full: leaves up to this size are checked entry by entry.
      seed: for the random directions.

    Returns:
      A :class:`GradReport`. A ``grad_fn`` that returns the wrong pytree
      structure or shapes gets failing rows naming the leaf, not an exception.

    Raises:
      TypeError: an argument of the wrong type: a ``grad_fn`` or ``loss_fn``
        that is not callable, params leaves that are not float arrays
        (integer, bool, complex), a dtype that is not a floating dtype.
      ValueError: ``loss_fn`` does not return a scalar; a negative or zero
        tolerance or count; a check that would compare nothing (no dtypes
        and no finite differences, params without entries).
    """
    dtypes, finite_differences, tolerances, fd_rtol, fd_atol, directions, max_full, seed = _check_arguments(
        grad_fn, loss_fn, params, dtypes, finite_differences, tolerances, fd_rtol, fd_atol, directions, max_full, seed)
    reduction = max([int(np.size(a)) for a in jax.tree_util.tree_leaves((params, args))] or [1])
    derived = {d: dtype_tolerance(d, reduction) for d in dtypes if d in LOW_PRECISION}
    tolerances = {**DEFAULT_TOLERANCES, **derived, **(tolerances or {})}
    results: dict[str, dict[str, Any]] = {}
    problems: dict[str, str] = {}
    shapes: dict[str, tuple[Any, ...]] = {}
    fd_methods: dict[str, str] = {}
    x64_before = cast(Any, jax.config).jax_enable_x64  # a flag jax.config sets as an attribute

    # One program, compiled once per dtype: both gradients. Its float64 compilation also gives the float64 truth at
    # a rounded point and the finite-difference columns' gradients (kept, not recomputed).
    both = jax.jit(lambda p, *a: (jax.grad(loss_fn)(p, *a), grad_fn(p, *a)))
    float64_grads: tuple[Any, Any] | None = None
    with jax.default_matmul_precision("highest"):
        for dtype_name in dtypes:
            dtype = jnp.dtype(dtype_name)
            with jax.enable_x64(dtype == jnp.float64 or x64_before):
                p, a = _cast(params, dtype), _cast(args, dtype)
                _scalar_loss(loss_fn, p, a)
                ref_tree, got_tree = both(p, *a)
                ref, got = _leaves_by_path(ref_tree), _leaves_by_path(got_tree)
                if dtype == jnp.float64:
                    float64_grads = (ref, got)
                for path, r in ref.items():
                    shapes[path] = tuple(r.shape)
                    g = got.get(path)
                    if g is None:
                        problems[path] = "missing from grads"
                    elif tuple(np.shape(g)) != tuple(r.shape):
                        problems[path] = f"grads has shape {tuple(np.shape(g))}, params {tuple(r.shape)}"
                    else:
                        results.setdefault(path, {})[f"{dtype_name} vs jax.grad"] = _errors(g, r)
                for path in got.keys() - ref.keys():
                    problems[path] = "in grads but not in params"
                    shapes[path] = tuple(np.shape(got[path]))
            if dtype_name in LOW_PRECISION:
                # the float64 truth at the same (rounded) point: what the low-precision rule approximates
                with jax.enable_x64(True):
                    truth = _leaves_by_path(both(_cast(p, jnp.float64), *_cast(a, jnp.float64))[0])
                for path, t in truth.items():
                    if path not in problems and path in got:
                        results[path][f"{dtype_name} vs float64 truth"] = _errors(got[path], t)

        if finite_differences:
            with jax.enable_x64(True):
                p, a = _cast(params, jnp.float64), _cast(args, jnp.float64)
                if float64_grads is None:
                    _scalar_loss(loss_fn, p, a)
                    ref_tree, got_tree = both(p, *a)
                    float64_grads = (_leaves_by_path(ref_tree), _leaves_by_path(got_tree))
                ref, got = float64_grads
                keys = jax.random.split(jax.random.key(seed), max(len(ref), 1))
                for path, (basis, fd, method) in _finite_difference_projections(loss_fn, p, a, directions, max_full, keys).items():
                    fd_methods[path] = method
                    results.setdefault(path, {})["float64 jax.grad vs finite diff."] = _errors(basis @ ref[path].reshape(-1), fd)
                    if path not in problems and path in got:
                        results[path]["float64 vs finite diff."] = _errors(basis @ jnp.asarray(got[path]).reshape(-1), fd)

    leaves = []
    for path in list(shapes):
        errors = results.get(path, {})
        ok = path not in problems
        for column, (abs_err, rel_err) in errors.items():
            rtol, atol = tolerances.get(column.split(" ")[0], (1e-5, 0.0)) if "finite" not in column else (fd_rtol, fd_atol)
            ok = ok and np.isfinite(rel_err) and (rel_err <= rtol or abs_err <= atol)
        leaves.append(LeafReport(path, shapes[path], errors, fd_methods.get(path, "-"), problems.get(path, ""), bool(ok)))
    report_tolerances = {f"{d} vs jax.grad": tolerances[d] for d in dtypes}
    report_tolerances.update({f"{d} vs float64 truth": tolerances[d] for d in dtypes if d in LOW_PRECISION})
    report_tolerances["float64 vs finite diff."] = (fd_rtol, fd_atol)
    report_tolerances["float64 jax.grad vs finite diff."] = (fd_rtol, fd_atol)
    return GradReport(leaves, report_tolerances)


def assert_grads_close(grad_fn: Callable[..., Any], loss_fn: Callable[..., Any], params: Any, *args: Any, **kwargs: Any) -> GradReport:
    """:func:`check_grads`, raising ``AssertionError`` with the worst leaves when any leaf fails."""
    report = check_grads(grad_fn, loss_fn, params, *args, **kwargs)
    if not report.passed:
        failing = [leaf for leaf in report.worst(len(report.leaves)) if not leaf.passed]
        raise AssertionError(f"gradients differ in {len(failing)} of {len(report.leaves)} leaves (worst first):\n"
                             + report.table(failing[:10]))
    return report


def _random_input(key, shape_or_x, integer_input: bool):
    """``shape_or_x`` itself if it holds arrays; else random inputs of that shape (a tuple of shapes for several)."""
    if isinstance(shape_or_x, (tuple, list)) and shape_or_x and all(isinstance(s, (tuple, list)) for s in shape_or_x):
        return tuple(_random_input(k, s, integer_input) for k, s in zip(jax.random.split(key, len(shape_or_x)), shape_or_x))
    if isinstance(shape_or_x, (tuple, list)) and all(isinstance(d, (int, np.integer)) for d in shape_or_x):
        if not shape_or_x or any(d < 1 for d in shape_or_x):
            raise ValueError(f"x must be an array or a concrete input shape of positive sizes (no -1, no 0), "
                             f"got {tuple(shape_or_x)}")
        if integer_input:
            return jax.random.randint(key, tuple(shape_or_x), 0, 8)
        return jax.random.normal(key, tuple(shape_or_x))
    return shape_or_x


_TRUNCATE = re.compile(r"\btruncate=\d+")


def _truncating(layer: Any, path: str = "") -> list[str]:
    """``"path: spec"`` of every layer in ``layer`` (itself or a child) whose rule truncates its gradient by
    design (a recurrent layer built with ``truncate=k``: backpropagation through time cut every k steps)."""
    found = [f"{path or layer.name}: {layer.spec}"] if _TRUNCATE.search(layer.spec) and not layer.children else []
    for name, child in layer.children:
        found += _truncating(child, f"{path}/{name}" if path else name)
    return found


def _finite_differences_not_counted(report: GradReport, note: str) -> GradReport:
    """The same report, its verdict taken from the jax.grad columns only, with ``note`` saying why."""
    leaves = []
    for leaf in report.leaves:
        ok = not leaf.problem
        for column, (abs_err, rel_err) in leaf.errors.items():
            if "finite" in column:
                continue
            rtol, atol = report.tolerances.get(column, (FD_RTOL, 0.0))
            ok = ok and bool(np.isfinite(rel_err)) and (rel_err <= rtol or abs_err <= atol)
        leaves.append(dataclasses.replace(leaf, passed=bool(ok)))
    return GradReport(leaves, report.tolerances, report.notes + (note,))


def _is_shape(x: Any) -> bool:
    return isinstance(x, (tuple, list)) and all(isinstance(d, (int, np.integer)) for d in x)


def _is_shape_tree(x: Any) -> bool:
    """A shape, or a (nested) tuple of shapes: a cell's ``(carry, x_t)`` input."""
    return _is_shape(x) or (isinstance(x, (tuple, list)) and bool(x) and all(_is_shape_tree(s) for s in x))


def _check_input(x: Any, integer_input: bool) -> None:
    """An input array, a tuple of them, a shape or a tuple of shapes; arrays not empty, float unless
    ``integer_input`` (ids). Shapes are checked by :func:`_random_input`."""
    if _is_shape_tree(x):
        return
    for item in jax.tree_util.tree_leaves(tuple(x) if isinstance(x, (tuple, list)) else x):
        if not isinstance(item, (jax.Array, np.ndarray)):
            raise TypeError(f"x must be an array, a tuple of arrays, or a concrete input shape, got {type(item).__name__}")
        if integer_input:
            _checks.integer(item, "x")
        else:
            _checks.floating(item, "x")
        if item.size == 0:
            raise ValueError(f"x must not be empty (the check needs at least one example), got shape {tuple(item.shape)}")


def check_layer(layer: Any, x: Any, *, key: jax.Array | None = None, train: bool = True,
                integer_input: bool = False, truncated: bool | None = None, **kwargs: Any) -> GradReport:
    """Check one layer's hand-derived rule: its params and input cotangents against
    ``jax.grad`` (float32, float64) and finite differences (float64), per leaf.

    The rule ``layer.backward(params, state, x, r)`` is checked as the gradient
    of ``L = sum(layer(x) * r)`` for a random output cotangent ``r``, with
    respect to the params (leaves ``params/...``) and the input (``x``,
    or ``x/0``, ``x/1``, ... for several inputs).

    Args:
      layer: any :class:`jaxnets.layers.Layer` with a rule (built-in ones, or
        made with :func:`jaxnets.layers.define_layer`).
      x: the input, or a concrete input shape (random normal inputs), or a
        tuple of shapes for a layer with several inputs.
      key: for init, the input, ``r`` and the layer's randomness; default ``key(0)``.
      train: the mode to check (Dropout draws the same mask in both passes).
      integer_input: the input is integer ids (no input cotangent is checked).
      truncated: whether the layer's rule is a truncated gradient by design
        (``LSTM(..., truncate=k)``: the rule and ``jax.grad`` both cut
        backpropagation through time every k steps, finite differences of
        the loss see the whole derivative and cannot agree). ``None``
        (default) finds such layers by their ``truncate=`` option. When
        truncated, the finite-difference columns are still shown but do not
        count toward the verdict, and the report's notes say so and why.
      **kwargs: passed to :func:`check_grads` (``dtypes``, ``tolerances``, ...).

    Returns:
      A :class:`GradReport`; print it for the table, ``.passed`` for the verdict.

    Example::

        report = gradcheck.check_layer(L.Dense(3), (4, 5))
        assert report.passed, report
    """
    from jaxnets.layers import Layer, require_rule

    if not isinstance(layer, Layer):
        raise TypeError(f"layer must be a jaxnets Layer, got {type(layer).__name__}")
    require_rule(layer)
    train = _checks.boolean(train, "train")
    integer_input = _checks.boolean(integer_input, "integer_input")
    cut = _truncating(layer)
    if truncated is not None:
        truncated = _checks.boolean(truncated, "truncated")
    elif cut:
        truncated = True
    if isinstance(x, (str, bytes)) or not isinstance(x, (tuple, list, jax.Array, np.ndarray)):
        raise TypeError(f"x must be an array, a tuple of arrays, or a concrete input shape, got {type(x).__name__} {x!r:.60}")
    _check_input(x, integer_input)
    key = jax.random.key(0) if key is None else _checks.prng_key(key, "key")
    k_init, k_x, k_r, k_apply = jax.random.split(key, 4)
    x = _random_input(k_x, x, integer_input)
    shapes = jax.tree_util.tree_map(lambda a: tuple(a.shape), x)
    _, params, state = layer.init_with_state(k_init, shapes)
    y = jax.eval_shape(lambda p, s, x: layer.apply_with_state(p, s, x, key=k_apply, train=train)[0], params, state, x)
    leaves, treedef = jax.tree_util.tree_flatten(y)  # shapes only: the output is computed in the compiled checks
    r = jax.tree_util.tree_unflatten(treedef, [jax.random.normal(k, a.shape) for k, a in
                                               zip(jax.random.split(k_r, len(leaves)), leaves)])
    point = {"params": params} if integer_input else {"params": params, "x": x}

    def loss(pt, r, state):
        inputs = x if integer_input else pt["x"]
        out, _ = layer.apply_with_state(pt["params"], state, inputs, key=k_apply, train=train)
        return sum(jnp.sum(a * b) for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(r)))

    def hand(pt, r, state):
        inputs = x if integer_input else pt["x"]
        p_bar, x_bar = layer.backward(pt["params"], state, inputs, r, key=k_apply, train=train)
        return {"params": p_bar} if integer_input else {"params": p_bar, "x": x_bar}

    if truncated and not tuple(kwargs.get("dtypes", ("float32", "float64"))):
        raise _nothing("a truncated rule is compared with jax.grad only (finite differences see the untruncated "
                       "derivative), and dtypes=() leaves no such comparison")
    report = check_grads(hand, loss, point, r, state, **kwargs)
    if truncated:
        which = "; ".join(cut) if cut else "the caller marked it truncated=True"
        report = _finite_differences_not_counted(report, (
            f"the rule truncates the gradient by design ({which}): it and jax.grad cut backpropagation through time, "
            "finite differences of the loss see the untruncated derivative, so the finite-difference columns do not "
            "count toward the verdict (check the untruncated layer against them)"))
    return report
