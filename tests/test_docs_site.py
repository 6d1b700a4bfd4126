"""The documentation site builds with Sphinx (MyST pages, API reference from the docstrings), warnings as errors."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

pytest.importorskip("sphinx", reason="the site needs the docs extra: pip install -e '.[test]'")
pytest.importorskip("myst_parser")


@pytest.mark.slow
def test_site_builds_without_warnings(tmp_path):
    out = tmp_path / "html"
    result = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
                             str(ROOT / "docs"), str(out)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"sphinx failed:\n{result.stdout}\n{result.stderr}"
    api = (out / "api" / "layers.html").read_text()
    assert "define_layer" in api and "Dense" in api, "the API reference lacks the layers' docstrings"
    for page in ("index.html", "guides/custom_layers.html", "lessons/06_backprop_by_hand.html"):
        assert (out / page).stat().st_size > 5000, f"{page} is nearly empty"
