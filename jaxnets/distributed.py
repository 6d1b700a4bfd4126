"""Scale-out: meshes, shardings, processes.

(The module is ``distributed``, not ``parallel`` as DESIGN.md's layout had
it: ``jaxnets.parallel`` is the combinator that runs layers side by side,
re-exported from :mod:`jaxnets.layers`, and a submodule of that name would
replace it on the package the moment it was imported.)

Data parallel training is a placement, not a new program. :func:`jaxnets.fit`
with ``mesh=`` (a :class:`jax.sharding.Mesh`, or a list of devices that
:func:`data_mesh` turns into one) keeps the whole data set replicated on
every device, constrains each gathered batch to ``P(axis)`` (the batch axis
split over the mesh's data axis) with ``jax.lax.with_sharding_constraint``,
and places the params and optimizer state replicated (or sharded, below).
XLA's SPMD partitioner then splits the step: each device runs the forward
and backward pass on its slice of the batch, and the mean over the batch in
the loss becomes a local sum plus an all-reduce, which is exactly the
gradient all-reduce of data parallelism. Nothing in the layers knows about
devices.

Why ``AxisType.Auto``. ``jax.make_mesh`` now makes *explicit* axes, under
which every array's type carries its sharding and each operation must be
able to state its output's. The layers carry no sharding annotations, and
under explicit axes that breaks two of the three things done here (checked
on jax 0.10.2 with 2 devices): the FSDP step's first product,
``f32[32@data,8] @ f32[8,16@data]``, raises a ``ShardingTypeError`` (it
would need an ``out_sharding`` on every product of every layer), and
``with_sharding_constraint`` turns into an assertion, so the fused epoch
could not split the batch it gathers from the replicated data (it would
need ``jax.sharding.reshard``). Plain data parallelism with replicated
params does trace under explicit axes, but one rule for all three is
simpler. With ``Auto`` axes sharding is a hint: the constraint on the batch
and the placement of the state are the only annotations, and the
partitioner propagates them through the unannotated layers and inserts the
collectives. So this module builds every mesh with ``Auto`` axes and
refuses a mesh whose data axis is not ``Auto`` (a ``ValueError`` naming it).

Why BatchNorm's statistics are global. BatchNorm computes ``mean(x, axis=0)``
over the whole (logical) batch; the program is written for the global array,
and the partitioner lowers a mean over a sharded axis to a local sum and an
all-reduce. So the statistics, and the running averages in the model state,
are those of the whole batch, as on one device (the tests check it against
the single-device run), not per-device ("ghost") statistics.

What moves between devices (the tests pin it in the compiled step's HLO):
for an MLP, one all-reduce per step, a tuple of every gradient and the
loss (XLA's all-reduce combiner merges the per-leaf reductions); with
BatchNorm, four more all-reduces of ``(channels,)`` vectors (the batch mean
and variance forward, the two batch means of the backward rule); no
all-gather, collective-permute or all-to-all. The evaluation passes after
each epoch run on the replicated data, whole on every device: no
communication, no speed-up.

Sharded parameters (FSDP-style, ``param_sharding="fsdp"``): each leaf of
the params, the optimizer state and the model state is split along its
largest axis over the data axis when that axis divides evenly, and
replicated otherwise (vectors, scalars, keys: :func:`fsdp_spec`). The
annotations are on the state only; the partitioner chooses, product by
product, what to gather (the weight, or the activations when they are the
smaller) and how to bring the gradients back to their shards, and the
optimizer updates each shard where it lives. The memory per device for
the state falls by up to the mesh size (:func:`param_bytes_per_device`).

Processes: :func:`initialize` wraps ``jax.distributed.initialize`` with
checked arguments (or the ``JAXNETS_COORDINATOR``, ``JAXNETS_NUM_PROCESSES``,
``JAXNETS_PROCESS_ID`` environment variables), a timeout, and a check that
every process was started with the same process count. After it,
``jax.devices()`` lists every process's devices, :func:`data_mesh` spans
them, and ``fit`` runs the identical program in every process: each holds
the whole data set (the same seed gives the same permutation), builds its
part of every global array from its host copy, and only process 0 prints,
shows the progress bar and writes the history file.

Example::

    mesh = jaxnets.distributed.data_mesh()          # every device, one axis "data"
    state, history = jaxnets.fit(model, loss, optax.adam(1e-3), digits, batch_size=512, mesh=mesh)
    state, history = jaxnets.fit(..., mesh=mesh, param_sharding="fsdp")
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Sequence, TypeVar, cast

_T = TypeVar("_T")

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = ["data_mesh", "as_mesh", "fsdp_spec", "state_shardings", "shard", "shard_batch", "param_bytes_per_device",
           "initialize", "is_main_process", "Placement", "placement"]

#: The param_sharding rules ``fit`` knows.
RULES = ("replicated", "fsdp")


def data_mesh(devices: Sequence[Any] | None = None, axis: str = "data") -> Mesh:
    """A one-axis mesh over ``devices`` (default: every device of every process), with an ``Auto`` axis.

    Args:
      devices: ``jax.Device``\\ s (e.g. ``jax.devices()[:4]``); default ``jax.devices()``.
      axis: the axis name, which ``fit(data_axis=...)`` and the shardings refer to.

    Returns:
      ``Mesh(devices, (axis,), axis_types=(AxisType.Auto,))`` (see the module
      docstring for why ``Auto``).
    """
    if not isinstance(axis, str) or not axis:
        raise TypeError(f"axis must be a non-empty string (the mesh axis name), got {axis!r}")
    if devices is None:
        devices = jax.devices()
    if isinstance(devices, (str, bytes)) or not hasattr(devices, "__iter__"):
        raise TypeError(f"devices must be a sequence of jax devices (e.g. jax.devices()[:4]), got {devices!r}")
    devices = list(devices)
    if not devices:
        raise ValueError("devices must hold at least one jax device, got an empty sequence")
    bad = [d for d in devices if not isinstance(d, jax.Device)]
    if bad:
        raise TypeError(f"devices must be jax devices (e.g. jax.devices()[:4]), got {bad[0]!r}")
    if len(set(devices)) != len(devices):
        raise ValueError(f"devices must be distinct, got {devices}")
    return Mesh(np.array(devices, dtype=object), (axis,), axis_types=(AxisType.Auto,))


def as_mesh(mesh: Any, axis: str = "data") -> Mesh:
    """``mesh`` checked (it has ``axis``, of type ``Auto``), or a list of devices made :func:`data_mesh`."""
    if not isinstance(axis, str) or not axis:
        raise TypeError(f"data_axis must be a non-empty string (the mesh axis name), got {axis!r}")
    if not isinstance(mesh, Mesh):
        if isinstance(mesh, jax.sharding.AbstractMesh) or isinstance(mesh, (str, bytes)) or not hasattr(mesh, "__iter__"):
            raise TypeError(f"mesh must be a jax.sharding.Mesh or a list of jax devices, got {type(mesh).__name__}")
        return data_mesh(mesh, axis)
    if axis not in mesh.axis_names:
        raise ValueError(f"mesh has no axis {axis!r} (data_axis): its axes are {tuple(mesh.axis_names)}; name the batch "
                         f"axis with data_axis=, or build the mesh with jaxnets.distributed.data_mesh(devices, axis={axis!r})")
    kind = dict(zip(mesh.axis_names, mesh.axis_types))[axis]
    if kind != AxisType.Auto:
        raise ValueError(f"mesh axis {axis!r} must be AxisType.Auto (jaxnets annotates the batch and the params only and "
                         f"lets the partitioner place the rest), got {kind}; build the mesh with "
                         f"jax.make_mesh(..., axis_types=(AxisType.Auto, ...)) or jaxnets.distributed.data_mesh")
    return mesh


def fsdp_spec(shape: Sequence[int], size: int, axis: str = "data") -> PartitionSpec:
    """The FSDP rule for one leaf: split its largest axis over ``axis`` if ``size`` divides it, else replicate.

    Only matrices and higher (rank >= 2) are split: vectors (biases,
    BatchNorm statistics) are small and replicated. Among equally large
    axes the first is taken.

    Args:
      shape: the leaf's shape.
      size: the number of devices along ``axis``.

    Returns:
      A ``PartitionSpec`` with ``axis`` at the split position, or ``P()``.
    """
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__") or \
            not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise TypeError(f"shape must be a sequence of non-negative ints, got {shape!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int (the number of devices along the axis), got {size!r}")
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2 or size <= 1:
        return PartitionSpec()
    largest = int(np.argmax(shape))
    if shape[largest] % size:
        return PartitionSpec()
    return PartitionSpec(*([None] * largest + [axis]))


def _leaf_sharding(mesh: Mesh, rule: str | Callable[..., Any], axis: str) -> Callable[[Any], NamedSharding]:
    size = mesh.shape[axis]

    def sharding(leaf):
        if rule == "replicated" or _is_key(leaf):
            return NamedSharding(mesh, PartitionSpec())
        if rule == "fsdp":
            return NamedSharding(mesh, fsdp_spec(np.shape(leaf), size, axis))
        spec = cast(Callable[..., Any], rule)(leaf)  # a callable: _check_rule let no other string through
        return spec if isinstance(spec, NamedSharding) else NamedSharding(mesh, spec)

    return sharding


def _check_rule(rule: Any) -> None:
    if not (rule in RULES or callable(rule)) or isinstance(rule, bool):
        raise ValueError(f"param_sharding must be one of {RULES} or a callable leaf -> PartitionSpec, got {rule!r}")


def state_shardings(tree: Any, mesh: Any, rule: str | Callable[..., Any] = "replicated", axis: str = "data") -> Any:
    """A ``NamedSharding`` per leaf of ``tree`` (params, optimizer state, a whole :class:`jaxnets.TrainState`).

    Args:
      tree: any pytree of arrays (or ``jax.ShapeDtypeStruct``\\ s).
      mesh: a ``Mesh`` or a list of devices.
      rule: ``"replicated"`` (every leaf whole on every device), ``"fsdp"``
        (:func:`fsdp_spec` per leaf), or ``leaf -> PartitionSpec``.
        Random keys are always replicated.
      axis: the mesh axis the rule splits over.

    Returns:
      ``tree``'s structure with a ``NamedSharding`` at every leaf.
    """
    _check_rule(rule)
    mesh = as_mesh(mesh, axis)
    return jax.tree_util.tree_map(_leaf_sharding(mesh, rule, axis), tree)


def _is_key(leaf) -> bool:
    return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _put(leaf: Any, sharding: NamedSharding) -> jax.Array:
    """``leaf`` (every process holds its whole value) as a global array with ``sharding``.

    In one process this is ``jax.device_put``. Across processes each one
    builds the shards its own devices hold from its host copy
    (``jax.make_array_from_callback``); a key goes through its key data.
    """
    if sharding.is_fully_addressable:
        return jax.device_put(leaf, sharding, may_alias=False)
    if _is_key(leaf):
        impl = jax.random.key_impl(leaf)
        data = _put(jax.random.key_data(leaf), sharding)
        return jax.random.wrap_key_data(data, impl=impl)
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard(tree: Any, shardings: Any) -> Any:
    """``tree`` placed with one sharding per leaf (from :func:`state_shardings`), in one process or many.

    A copy: the input is never consumed. Every process must pass the same
    values (the same seed builds the same initial state everywhere).
    """
    want = jax.tree_util.tree_structure(tree)
    got = jax.tree_util.tree_structure(shardings, is_leaf=lambda n: isinstance(n, jax.sharding.Sharding))
    if want != got:
        raise ValueError(f"shardings must have the structure of tree (one sharding per leaf, e.g. from state_shardings):\n"
                         f"  tree: {want}\n  shardings: {got}")
    bad = [s for s in jax.tree_util.tree_leaves(shardings) if not isinstance(s, jax.sharding.Sharding)]
    if bad:
        raise TypeError(f"shardings must hold jax.sharding.Sharding leaves (NamedSharding), got {type(bad[0]).__name__}")
    return jax.tree_util.tree_map(_put, tree, shardings)


def shard_batch(batch: Any, mesh: Any, axis: str = "data", *, process_local: bool = False) -> Any:
    """A batch (any pytree with a leading batch axis) split over ``axis``, for a step jitted over sharded inputs.

    The general step (:func:`jaxnets.make_step`) needs no mesh argument:
    ``jax.jit`` follows the shardings of its inputs. Place the state with
    :func:`shard` and the batch with this, and the step runs data parallel.

    Args:
      batch: the global batch (every process passes the same one), or, with
        ``process_local=True``, this process's rows of it (in process order,
        ``jax.make_array_from_process_local_data``).
      mesh: a ``Mesh`` or a list of devices.
      axis: the mesh axis to split the batch over.

    Raises:
      ValueError: a batch size the number of devices along ``axis`` does not divide.
    """
    mesh = as_mesh(mesh, axis)
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    size = mesh.shape[axis]
    leaves = jax.tree_util.tree_leaves(batch)
    if not leaves:
        raise ValueError("batch holds no arrays")
    for leaf in leaves:
        rows = np.shape(leaf)[0] if np.ndim(leaf) else None
        total = None if rows is None else rows * (jax.process_count() if process_local else 1)
        if total is None or total % size:
            raise ValueError(f"batch size must be divisible by the {size} devices of mesh axis {axis!r}, got a leaf of "
                             f"shape {tuple(np.shape(leaf))}")
    if process_local:
        return jax.tree_util.tree_map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), batch)
    return jax.tree_util.tree_map(lambda a: _put(a, sharding), batch)


def param_bytes_per_device(tree: Any) -> dict[int, int]:
    """Bytes of ``tree``'s arrays held by each (addressable) device: ``{device id: bytes}``.

    Replicated leaves count in full on every device; sharded ones only the
    shard each device holds. Non-array leaves count nothing.
    """
    out: dict[int, int] = {}
    for leaf in jax.tree_util.tree_leaves(tree):
        if not isinstance(leaf, jax.Array):
            raise TypeError(f"param_bytes_per_device needs a pytree of jax arrays (placed ones), got a leaf of type "
                            f"{type(leaf).__name__}")
        if _is_key(leaf):
            leaf = jax.random.key_data(leaf)
        for piece in leaf.addressable_shards:
            out[piece.device.id] = out.get(piece.device.id, 0) + piece.data.nbytes
    return dict(sorted(out.items()))


def is_main_process() -> bool:
    """True in process 0: the one that prints, shows progress and writes history files."""
    return jax.process_index() == 0


# --- processes -----------------------------------------------------------------------------------------------------

_ADDRESS = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")


def _env_int(value, name: str, env: str):
    if value is None and os.environ.get(env) is not None:
        text = os.environ[env]
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{name} from the environment variable {env} must be an int, got {text!r}") from None
    return value


def initialize(coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, local_device_ids: Sequence[int] | None = None, timeout: int = 60) -> None:
    """Joins this process to a multi-process run (``jax.distributed.initialize``), with checked arguments.

    Every process calls it with the same ``coordinator_address`` (``host:port``
    of process 0, which serves it) and ``num_processes``, and its own
    ``process_id`` in ``[0, num_processes)``; arguments left out are read from
    ``JAXNETS_COORDINATOR``, ``JAXNETS_NUM_PROCESSES`` and
    ``JAXNETS_PROCESS_ID``. After connecting, each process publishes its
    ``num_processes`` in the coordinator's key-value store and compares it
    with process 0's: a process started with another count gets a
    ``ValueError`` naming both (JAX itself would hang or fail later inside a
    collective). On CPU, the cross-process collectives are gloo's.

    Args:
      coordinator_address: ``"host:port"``; the host must be reachable from every process.
      num_processes: the number of processes (>= 1).
      process_id: this process's index.
      local_device_ids: restrict this process to these local devices (e.g. one GPU per process).
      timeout: seconds to wait for every process to connect, and for the count check.

    Raises:
      ValueError, TypeError: a malformed or missing argument, a process id out
        of range, or a process count that differs from the coordinator's;
        before connecting where the arguments alone show it.
      RuntimeError: the processes did not all connect within ``timeout``.
    """
    coordinator_address = coordinator_address if coordinator_address is not None else os.environ.get("JAXNETS_COORDINATOR")
    num_processes = _env_int(num_processes, "num_processes", "JAXNETS_NUM_PROCESSES")
    process_id = _env_int(process_id, "process_id", "JAXNETS_PROCESS_ID")
    if coordinator_address is None or num_processes is None or process_id is None:
        missing = [n for n, v in (("coordinator_address (JAXNETS_COORDINATOR)", coordinator_address),
                                  ("num_processes (JAXNETS_NUM_PROCESSES)", num_processes),
                                  ("process_id (JAXNETS_PROCESS_ID)", process_id)) if v is None]
        raise ValueError(f"initialize needs {', '.join(missing)}: pass them or set the environment variables")
    if not isinstance(coordinator_address, str) or not _ADDRESS.match(coordinator_address):
        raise ValueError(f"coordinator_address must be 'host:port' (e.g. 'localhost:12345'), got {coordinator_address!r}")
    for name, value in (("num_processes", num_processes), ("process_id", process_id), ("timeout", timeout)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, num_processes) = [0, {num_processes}), got {process_id}")
    if timeout < 1:
        raise ValueError(f"timeout must be >= 1 second, got {timeout}")
    if jax.distributed.is_initialized():
        if jax.process_count() != num_processes or jax.process_index() != process_id:
            raise ValueError(f"jax.distributed is already initialized as process {jax.process_index()} of "
                             f"{jax.process_count()}, not process {process_id} of num_processes={num_processes}")
        return
    try:
        jax.distributed.initialize(coordinator_address, int(num_processes), int(process_id),
                                   local_device_ids=local_device_ids, initialization_timeout=int(timeout),
                                   heartbeat_timeout_seconds=max(10, int(timeout)))
    except Exception as error:  # noqa: BLE001 - JAX's errors come from its C++ client; add what to check
        raise RuntimeError(f"process {process_id} could not join {num_processes} process(es) at {coordinator_address} "
                           f"within {timeout} s ({type(error).__name__}: {error}); check that every process got the same "
                           f"coordinator_address and num_processes and a distinct process_id") from error
    _check_process_count(int(num_processes), int(process_id), int(timeout))


def _check_process_count(num_processes: int, process_id: int, timeout: int) -> None:
    """Every process publishes its count; each compares it with process 0's (the coordinator's).

    This has to happen before the backend starts: JAX exchanges the device
    topology when it first lists devices, and with mismatched counts that
    waits for processes that never come. The public multi-host helpers
    (``jax.experimental.multihost_utils``) need the backend, so this uses the
    key-value store of the coordination client ``jax.distributed`` holds (a
    private attribute: without it the check is skipped, not failed).
    """
    try:
        from jax._src import distributed as _jax_distributed

        client = _jax_distributed.global_state.client
    except (ImportError, AttributeError):
        return
    if client is None:
        return
    client.key_value_set(f"jaxnets/num_processes/{process_id}", str(num_processes))
    theirs = int(client.blocking_key_value_get("jaxnets/num_processes/0", timeout * 1000))
    if theirs != num_processes:
        raise ValueError(f"num_processes={num_processes} in process {process_id}, but the coordinator (process 0) was "
                         f"started with num_processes={theirs}: start every process with the same count")
    if process_id == 0:
        for other in range(1, num_processes):
            got = int(client.blocking_key_value_get(f"jaxnets/num_processes/{other}", timeout * 1000))
            if got != num_processes:
                raise ValueError(f"num_processes={num_processes} in the coordinator (process 0), but process {other} was "
                                 f"started with num_processes={got}: start every process with the same count")


# --- placement for fit ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where ``fit``'s data, batches and state live on a mesh (hashable: part of the compiled program's configuration).

    Attributes:
      mesh: the mesh (``Auto`` data axis).
      axis: the data axis; each batch is split over it.
      rule: ``"replicated"``, ``"fsdp"`` or ``leaf -> PartitionSpec`` for the state.
      members: shard a population's leading member axis over ``axis`` instead
        (``fit_population``): data and batches replicated, no communication.
    """

    mesh: Mesh
    axis: str = "data"
    rule: Any = "replicated"
    members: bool = False

    @property
    def size(self) -> int:
        return self.mesh.shape[self.axis]

    def data(self, tree: Any) -> Any:
        """The whole data set, replicated on every device of the mesh (every process passes all of it)."""
        sharding = NamedSharding(self.mesh, PartitionSpec())
        return jax.tree_util.tree_map(lambda a: _put(np.asarray(a) if not isinstance(a, jax.Array) else a, sharding), tree)

    def shardings(self, state: Any) -> Any:
        if self.members:
            return jax.tree_util.tree_map(lambda leaf: NamedSharding(self.mesh, PartitionSpec(self.axis)), state)
        return state_shardings(state, self.mesh, self.rule, self.axis)

    def state(self, state: _T) -> _T:
        """``state`` placed by the rule (a copy)."""
        return shard(state, self.shardings(state))

    def constrain_batch(self, batch: Any) -> Any:
        """Inside the program: the gathered batch split over the data axis (a no-op for populations)."""
        if self.members:
            return batch
        sharding = NamedSharding(self.mesh, PartitionSpec(self.axis))
        return jax.tree_util.tree_map(lambda a: jax.lax.with_sharding_constraint(a, sharding), batch)

    def constrain_state(self, state: Any) -> Any:
        """Inside the program: the state kept in the rule's sharding from step to step."""
        if self.members:
            return state
        return jax.lax.with_sharding_constraint(state, self.shardings(state))


def placement(mesh: Any, *, axis: str = "data", rule: Any = "replicated", batch_size: int | None = None,
              members: int | None = None) -> Placement:
    """A checked :class:`Placement`: ``fit`` and ``fit_population`` call this before any device work.

    Raises:
      TypeError, ValueError: a mesh that is neither a ``Mesh`` nor devices, one
        without ``axis`` or with a non-``Auto`` one, an unknown rule, a
        ``batch_size`` (or a member count) that the number of devices along
        ``axis`` does not divide.
    """
    mesh = as_mesh(mesh, axis)
    _check_rule(rule)
    size = mesh.shape[axis]
    if batch_size is not None and batch_size % size:
        raise ValueError(f"batch_size must be divisible by the {size} devices of mesh axis {axis!r} (each takes an "
                         f"equal slice of every batch), got {batch_size}")
    if members is not None:
        if members % size:
            raise ValueError(f"the number of members must be divisible by the {size} devices of mesh axis {axis!r} "
                             f"(each trains an equal share), got {members}")
        return Placement(mesh, axis, "replicated", True)
    return Placement(mesh, axis, rule)
