"""Test configuration: strict dtype promotion, deterministic keys."""

import jax
import numpy as np
import pytest


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
