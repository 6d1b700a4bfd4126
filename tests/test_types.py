"""The package keeps what its ``py.typed`` promises: pyright finds no error, and the public API's types are known.

Both run pyright (the ``test`` extra's) with pyproject.toml's ``[tool.pyright]`` settings (basic rules) on
``jaxnets/`` as it is in this checkout. ``PYTHONPATH`` points at the checkout: pyright does not follow the
import hook of a setuptools editable install, so without it ``--verifytypes`` finds no package.

* ``--verifytypes jaxnets --ignoreexternal``: the share of exported names of known type (0.59 when issue 22
  was filed; 1.0 since) must stay >= 0.95. About 5 s, and the same at the floor releases: a fast test.
* ``pyright jaxnets``: zero errors. About 40 s (slow). With the floor's releases (jax 0.8.0, orbax-checkpoint
  0.11.17) pyright reports errors that come from their older annotations, not from this code (jax 0.8.0 types
  ``jnp.where(c, x, y)`` as ``Array | tuple[Array, ...]``; orbax 0.11.17's ``args.Composite`` takes no keywords),
  so the check runs with the releases CI's first step installs, as a slow test.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("pyright")

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _pyright(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "PYRIGHT_PYTHON_IGNORE_WARNINGS": "1"}  # no look-up of newer pyright releases
    done = subprocess.run([sys.executable, "-m", "pyright", "--pythonpath", sys.executable, "--outputjson", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"pyright did not run (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}") from None


def test_public_api_types_are_known():
    report = _pyright("--verifytypes", "jaxnets", "--ignoreexternal")
    completeness = report["typeCompleteness"]
    unknown = [s["name"] for s in completeness["symbols"]
               if s["isExported"] and (not s["isTypeKnown"] or s.get("isTypeAmbiguous"))]
    assert completeness["packageRootDirectory"] == str(ROOT / "jaxnets"), completeness["packageRootDirectory"]
    assert completeness["completenessScore"] >= 0.95, (
        f"type completeness {completeness['completenessScore']:.1%} < 95%: {completeness['exportedSymbolCounts']}; "
        f"names of unknown or ambiguous type: {unknown[:40]}")


@pytest.mark.slow
def test_pyright_finds_no_error():
    report = _pyright("jaxnets")
    errors = [d for d in report["generalDiagnostics"] if d["severity"] == "error"]
    lines = [f"{pathlib.Path(d['file']).relative_to(ROOT)}:{d['range']['start']['line'] + 1}: {d['message']} ({d.get('rule', '')})"
             for d in errors]
    assert report["summary"]["filesAnalyzed"] > 50, report["summary"]
    assert not errors, f"pyright (basic) found {len(errors)} errors in jaxnets:\n" + "\n".join(lines[:50])


def test_imports_under_python_OO():
    """``python -OO`` strips docstrings (``__doc__`` is None): the package still imports (pyright found the
    docstring that recurrent.py extended with ``+=``)."""
    done = subprocess.run([sys.executable, "-OO", "-c", "import jaxnets, jaxnets.layers.recurrent"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
