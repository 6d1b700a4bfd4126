"""Benchmark scripts run end to end in --quick mode (for correctness only, never timing)."""

import importlib.util
import json
import pathlib
import sys

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
