"""Benchmark scripts run end to end in --quick mode (for correctness only, never timing)."""

import importlib.util
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
STANDARD_PROMOTION_REASON = "benchmarks use optax.adam, whose bias correction mixes int32 and float"


def test_conv_impl_benchmark_quick(tmp_path):
    spec = importlib.util.spec_from_file_location("conv_impl", ROOT / "experiments" / "benchmarks" / "conv_impl.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["conv_impl"] = module
    spec.loader.exec_module(module)
    result = module.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "conv_impl.json").read_text())
    assert saved["rows"] == result["rows"] and len(result["rows"]) == 5
    assert result["rows"][0]["ratio_to_reference"] == 1.0
    assert all(r["ms_per_step"] > 0 for r in result["rows"])
    assert (tmp_path / "conv_impl.md").read_text().startswith("| contender |")


def _load(relative, name):
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_hand_backprop_benchmark_quick(tmp_path):
    result = _load("experiments/benchmarks/hand_backprop.py", "hand_backprop").main(["--quick", "--out", str(tmp_path)])
    assert [r["contender"] for r in result["rows"]][0].endswith("(reference)")
    assert result["hand_over_autodiff"] > 0
    assert result["test_accuracy"]["hand"] == pytest.approx(result["test_accuracy"]["autodiff"], abs=1 / 360 + 1e-9)
    assert (tmp_path / "hand_backprop.json").exists() and (tmp_path / "hand_backprop.md").exists()


def test_gradient_report_quick(tmp_path):
    result = _load("experiments/gradient_report.py", "gradient_report").main(["--quick", "--out", str(tmp_path)])
    assert len(result["rows"]) == 4 and all(row["passed"] for row in result["rows"])
    assert max(row["float64 vs jax.grad"] for row in result["rows"]) <= 1e-12
    assert (tmp_path / "gradient_report.md").read_text().startswith("| layer or model |")
