"""Test configuration: fast compilation, a compilation cache, strict dtype promotion, deterministic keys."""

import os
import shutil
import tempfile

# The suite is compile-bound: most of its programs are small and run once or a few times, so XLA:CPU's backend
# optimisation (LLVM -O3 by default) costs more than it saves. Level 0 cuts a gradient check's time by about 45%
# and the whole suite's by a quarter (CONTRIBUTING.md, 'Running the tests', has the figures). It changes how hard
# LLVM optimises the kernels, not what they compute (fast math stays off), up to last-place rounding where the
# optimiser would fuse a multiply and an add; the suite's comparisons are within tolerances, or bitwise between
# programs compiled alike. Set here, before jax starts its backend; the child processes the tests start inherit
# it (tests that set XLA_FLAGS for a child append to it). A level given by the caller is kept.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402  (after XLA_FLAGS)
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def compilation_cache():
    """One XLA compilation cache for the session, in a fresh folder removed at the end.

    Many tests compile the same programs (a small MLP trained on digits with
    Adam, say) from different Python functions; JAX's persistent cache keys
    programs by their HLO, so each is compiled once per session. This saves
    about a tenth of the suite's time, and nothing outlives the session.
    """
    folder = tempfile.mkdtemp(prefix="jaxnets-tests-xla-cache-")
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield
    jax.config.update("jax_compilation_cache_dir", None)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def strict_dtype_promotion(request):
    """Mixed-dtype arithmetic (float32 + float64, int + float arrays) raises inside tests,
    so an accidental promotion in the library fails loudly.

    A test module that runs optax's own transforms sets
    ``STANDARD_PROMOTION_REASON`` (a single test: ``@pytest.mark.standard_promotion(reason)``):
    optax's bias correction mixes its int32 step count with floats, which strict
    promotion rejects.
    """
    if getattr(request.module, "STANDARD_PROMOTION_REASON", None) or request.node.get_closest_marker("standard_promotion"):
        yield
        return
    with jax.numpy_dtype_promotion("strict"):
        yield


@pytest.fixture
def key():
    """A fixed root key: every test is deterministic."""
    return jax.random.key(0)


@pytest.fixture
def rng():
    """A fixed NumPy generator for reference data."""
    return np.random.default_rng(0)
