"""The wheel and sdist, built offline from the working tree, and the metadata and extras that pyproject.toml declares.

The build runs ``python -m build --no-isolation`` (the ``build`` and
``setuptools`` of the test extra) on a copy of the files the sdist is made
from, so the working tree gets no ``build/`` or ``*.egg-info`` folder. The
wheel is built from the sdist, as an installer from a package index would
build it, so a file missing from the sdist fails here too. The tests that
build are marked slow (CI's first step runs them; the floor step does not).
"""

from __future__ import annotations

import email.parser
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile

import pytest

import jaxnets

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS = PROJECT["optional-dependencies"]
RUNTIME_EXTRAS = ("data", "plots", "progress", "checkpoint", "stream", "tensorboard", "privacy")
TEST_TOOLS = ("pytest", "pytest-xdist", "hypothesis", "chex", "flax", "equinox", "setuptools", "build")
SDIST_SOURCES = ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "CHANGELOG.md")


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.\-]+", requirement)[0].lower()


def _modules() -> set[str]:
    """Every module of the package in the working tree, as archive paths (``jaxnets/layers/core.py``)."""
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / "jaxnets").rglob("*.py") if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """``(wheel, sdist)`` built from a copy of the sources."""
    src = tmp_path_factory.mktemp("src")
    for name in SDIST_SOURCES:
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "jaxnets", src / "jaxnets", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,), (sdist,) = out.glob("*.whl"), out.glob("*.tar.gz")
    return wheel, sdist


def _metadata(text: str):
    return email.parser.Parser().parsestr(text)


@pytest.mark.slow  # builds the package: 2-7 s
def test_wheel_holds_every_module_and_py_typed_and_nothing_else(built):
    wheel, _ = built
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = _modules()
    assert modules <= names, f"missing from the wheel: {sorted(modules - names)}"
    assert "jaxnets/py.typed" in names
    outside = sorted(n for n in names if not n.startswith(("jaxnets/", f"jaxnets-{jaxnets.__version__}.dist-info/")))
    assert not outside, f"the wheel holds files outside the package: {outside}"
    assert not [n for n in names if "test" in n.split("/")[0] or n.startswith(("experiments/", "docs/"))]


@pytest.mark.slow  # builds the package: 2-7 s
def test_wheel_metadata(built):
    wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        meta = _metadata(archive.read(f"jaxnets-{jaxnets.__version__}.dist-info/METADATA").decode())
    assert meta["Name"] == "jaxnets"
    assert meta["Version"] == jaxnets.__version__
    assert wheel.name == f"jaxnets-{jaxnets.__version__}-py3-none-any.whl"
    assert meta["Author"] == "jaxnets developers"
    assert meta["License-Expression"] == PROJECT["license"] == "Apache-2.0"
    assert meta["Requires-Python"] == PROJECT["requires-python"]
    assert meta["Keywords"].split(",") == PROJECT["keywords"]
    assert meta.get_all("Classifier") == PROJECT["classifiers"] and "Typing :: Typed" in PROJECT["classifiers"]
    assert meta["Description-Content-Type"] == "text/markdown" and meta.get_payload().startswith("# jaxnets")
    assert sorted(meta.get_all("Provides-Extra")) == sorted(EXTRAS)
    requires = meta.get_all("Requires-Dist")
    assert [r for r in requires if ";" not in r] == PROJECT["dependencies"]
    for extra, requirements in EXTRAS.items():
        assert sorted(r.split(";")[0].strip() for r in requires if f'extra == "{extra}"' in r) == sorted(requirements)


@pytest.mark.slow  # builds the package: 2-7 s
def test_sdist_holds_the_package_and_leaves_the_tests_out(built):
    """The tests read the docs, the experiments, README and .ci: the sdist leaves them all out rather than ship tests that fail."""
    wheel, sdist = built
    top = f"jaxnets-{jaxnets.__version__}/"
    names = {n[len(top):] for n in tarfile.open(sdist).getnames() if n.startswith(top)}
    assert _modules() <= names and "jaxnets/py.typed" in names
    assert {"pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "PKG-INFO"} <= names
    assert not [n for n in names if n.startswith(("tests/", "experiments/", "docs/", ".ci/"))]
    with tarfile.open(sdist) as archive:
        meta = _metadata(archive.extractfile(top + "PKG-INFO").read().decode())
    assert meta["Version"] == jaxnets.__version__


def test_the_version_is_written_once():
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "jaxnets.__version__"}
    release = re.fullmatch(r"(\d+\.\d+\.\d+)(\.dev\d+)?", jaxnets.__version__)
    assert release, jaxnets.__version__
    # a development version's release has its (unreleased) section in the changelog
    heading = f"## {release[1]}" + (" (unreleased)" if release[2] else "")
    assert heading in (ROOT / "CHANGELOG.md").read_text().splitlines()


def test_all_is_every_runtime_extra_and_test_holds_the_test_tools():
    assert set(EXTRAS) == set(RUNTIME_EXTRAS) | {"all", "docs", "test"}
    runtime = {r for extra in RUNTIME_EXTRAS for r in EXTRAS[extra]}
    assert sorted(EXTRAS["all"]) == sorted(runtime)
    assert not {_name(r) for r in EXTRAS["all"]} & set(TEST_TOOLS)
    # the test extra installs what every test imports: every runtime extra, the docs builder and the tools
    assert set(EXTRAS["test"]) >= runtime | set(EXTRAS["docs"])
    assert {_name(r) for r in EXTRAS["test"]} >= set(TEST_TOOLS)
    if "-n" in PYPROJECT["tool"]["pytest"]["ini_options"]["addopts"].split():
        assert "pytest-xdist" in {_name(r) for r in EXTRAS["test"]}


def test_the_readme_first_example_needs_only_the_data_extra(monkeypatch):
    """``load_digits`` (the README's first example) needs scikit-learn, which the ``data`` extra (and ``all``) brings;
    without it, the error names the extra."""
    assert [_name(r) for r in EXTRAS["data"]] == ["scikit-learn"] and EXTRAS["data"][0] in EXTRAS["all"]
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn raises ImportError
    with pytest.raises(ImportError, match=re.escape("load_digits needs scikit-learn: pip install 'jaxnets[data]'")):
        jaxnets.data.load_digits()
