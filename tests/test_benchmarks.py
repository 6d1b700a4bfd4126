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
    folder = str((ROOT / relative).parent)
    if folder not in sys.path:  # scripts import their neighbours (_workloads, _common) as when run directly
        sys.path.insert(0, folder)
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


def test_w1_benchmark_quick(tmp_path):
    result = _load("experiments/benchmarks/w1.py", "w1").main(["--quick", "--out", str(tmp_path)])
    assert len(result["rows"]) == 9 and result["rows"][0]["ratio_to_reference"] == 1.0
    assert "idle_callbacks_cost" in result
    assert "finiteness_check_cost" in result
    assert all(r["us_per_step"] > 0 for r in result["rows"])
    # The two steps are the same program up to the step counter: XLA counts the same work.
    costs = result["xla_cost"]
    assert costs["jaxnets step"]["flops"] == pytest.approx(costs["raw JAX step"]["flops"], rel=1e-4)
    assert json.loads((tmp_path / "w1.json").read_text())["rows"] == result["rows"]
    assert (tmp_path / "w1.md").read_text().startswith("| contender |")


def test_w2_benchmark_quick(tmp_path):
    result = _load("experiments/benchmarks/w2.py", "w2").main(["--quick", "--out", str(tmp_path)])
    assert [r["contender"] for r in result["rows"]][:2] == ["raw JAX step (reference)", "jaxnets step"]
    assert result["matmul_peak_gflops"] > 0 and all(r["fraction_of_peak"] > 0 for r in result["rows"])
    # 784-64-64-10 at batch 64: forward 64*(784*64 + 64*64 + 64*10) multiply-adds, backward twice that less the data's gradient
    forward = 64 * (784 * 64 + 64 * 64 + 64 * 10)
    assert result["matmul_flops_per_step"] == 2 * (3 * forward - 64 * 784 * 64)
    assert (tmp_path / "w2.json").exists() and (tmp_path / "w2.md").exists()


def test_population_benchmark_quick(tmp_path):
    result = _load("experiments/benchmarks/population.py", "population_benchmark").main(["--quick", "--out", str(tmp_path)])
    assert [r["members"] for r in result["rows"]] == [1, 1, 2]
    assert all(r["member_steps_per_s"] > 0 for r in result["rows"])
    assert (tmp_path / "population.md").read_text().startswith("| contender |")


@pytest.mark.slow
def test_end_to_end_benchmark_quick(tmp_path):
    result = _load("experiments/benchmarks/end_to_end.py", "end_to_end").main(["--quick", "--out", str(tmp_path)])
    run = result["runs"][0]
    assert 0 < run["seconds_before_fit"] < run["wall_seconds"] and run["peak_rss_mib"] > 50
    assert 0 < run["final_test_accuracy"] <= 1
    assert (tmp_path / "end_to_end.json").exists()


def test_sequence_benchmark_quick(tmp_path):
    result = _load("experiments/benchmarks/sequence.py", "sequence_benchmark").main(["--quick", "--out", str(tmp_path)])
    assert {r["workload"] for r in result["rows"]} == {"Transformer block", "LSTM", "Attention"}
    assert all(r["ms_per_step"] > 0 for r in result["rows"]) and len(result["ratios"]) == 4
    assert result["attention_max_abs_difference"] <= 1e-5  # the two attention blocks compute the same function
    assert (tmp_path / "sequence.md").read_text().startswith("| workload |")


def test_checkpointing_benchmark_quick(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    result = _load("experiments/benchmarks/checkpointing.py", "checkpointing").main(["--quick", "--out", str(tmp_path)])
    assert [r["contender"] for r in result["rows"]] == ["without checkpoints", "checkpoint every epoch"]
    assert all(r["train_seconds"] > 0 and r["fit_seconds"] > 0 for r in result["rows"]) and "overhead" in result
    assert (tmp_path / "checkpointing.md").read_text().startswith("| contender |")


def test_streaming_benchmark_quick(tmp_path):
    result = _load("experiments/benchmarks/streaming.py", "streaming_benchmark").main(["--quick", "--out", str(tmp_path),
                                                                                     "--dir", str(tmp_path)])
    assert [r["contender"] for r in result["rows"]] == ["in memory", "streamed"]
    assert result["ratio"] > 0 and result["file_bytes"] == 4096 * (784 + 1) * 4
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("jaxnets-streaming-")] == []  # the files are removed
    assert (tmp_path / "streaming.md").read_text().startswith("| contender |")


def test_w2_parallel_benchmark_quick(tmp_path):
    # in this process JAX has one device: the script's one-device and 1-device-mesh contenders (the 2-device figure
    # is its own process's, as the README's command runs it)
    result = _load("experiments/benchmarks/w2_parallel.py", "w2_parallel").main(["--quick", "--devices", "1", "--out", str(tmp_path)])
    assert [r["contender"] for r in result["rows"]] == ["jaxnets step, one device", "jaxnets step, data parallel on 1 devices",
                                                        "jaxnets step, data parallel on 1 devices, FSDP state",
                                                        "diagnosis: the split on 1 devices without the all-reduce"]
    assert result["throughput_ratio"] > 0 and json.loads((tmp_path / "w2_parallel.json").read_text())["rows"] == result["rows"]


def test_generation_benchmark_quick(tmp_path):
    result = _load("experiments/benchmarks/generation.py", "generation_benchmark").main(["--quick", "--out", str(tmp_path)])
    assert [r["contender"] for r in result["rows"]] == ["recompute the context (reference)", "key/value cache"]
    assert result["same_tokens"] and result["cache_speedup"] > 0 and all(r["tokens_per_second"] > 0 for r in result["rows"])
    assert (tmp_path / "generation.md").read_text().startswith("| contender |")


def test_transformer_benchmark_quick(tmp_path):
    # the script itself raises unless the raw-JAX GPT's first loss equals the jaxnets GPT's
    result = _load("experiments/benchmarks/transformer.py", "transformer").main(["--quick", "--out", str(tmp_path)])
    names = [r["contender"] for r in result["rows"]]
    assert names[0] == "raw JAX step (reference)" and "jaxnets step, hand rules" in names
    assert "jaxnets train.loop, autodiff" in names and result["rows"][0]["ratio_to_reference"] == 1.0
    assert result["initial_loss"]["raw"] == pytest.approx(result["initial_loss"]["jaxnets"], rel=1e-5)
    costs = result["xla_cost"]
    assert all(c["compile_s"] > 0 and c["bytes"] > 0 for c in costs.values())
    # the same model: XLA counts nearly the same work (the raw step's fused q/k/v product includes a zero key bias)
    assert costs["jaxnets step, autodiff"]["flops"] == pytest.approx(costs["raw JAX step"]["flops"], rel=0.05)
    assert json.loads((tmp_path / "transformer.json").read_text())["rows"] == result["rows"]


def test_resnet_benchmark_quick(tmp_path):
    result = _load("experiments/benchmarks/resnet.py", "resnet").main(["--quick", "--no-flax", "--no-torch", "--out", str(tmp_path)])
    names = [r["contender"] for r in result["rows"]]
    assert len(names) == 8 and names[0] == "raw JAX step (reference)" and "jaxnets train.loop, impl='im2col'" in names
    assert result["initial_loss"]["raw"] == pytest.approx(result["initial_loss"]["jaxnets"], rel=1e-5)
    costs = result["xla_cost"]
    # impl="xla" runs the reference's convolutions; BatchNorm's closed-form derivative does fewer flops than autodiff's
    # trace of the raw step's statistics (a large share at this tiny size: 0.84x here, 0.98x at the full size).
    # im2col's products multiply the gathered windows, so XLA counts more flops and far more bytes for them
    xla, im2col, raw = (costs[k] for k in ("jaxnets step, impl='xla'", "jaxnets step, impl='im2col'", "raw JAX step"))
    assert 0.7 * raw["flops"] <= xla["flops"] <= 1.02 * raw["flops"]
    assert im2col["flops"] > xla["flops"] and im2col["bytes"] > 2 * xla["bytes"]
    assert (tmp_path / "resnet.md").read_text().startswith("| contender |")


def test_gpt_profile_quick(tmp_path):
    result = _load("experiments/benchmarks/gpt_profile.py", "gpt_profile").main(["--quick", "--no-torch", "--out", str(tmp_path)])
    xla = result["xla_ms"]
    # the step's thunks were found in the trace and matched to the compiled HLO: products and element-wise work both
    assert xla.get("element-wise and reductions", 0) > 0 and result["xla_wall_ms"] > 0
    assert sum(v for k, v in xla.items() if "products" in k) > 0
    assert result["torch_ms"] is None and [r["product"] for r in result["matmuls"]][0] == "(16, 16) @ (16, 64)"
    assert all(r["jax_gflops"] > 0 for r in result["matmuls"])
    assert json.loads((tmp_path / "gpt_profile.json").read_text())["xla_ms"] == xla


def test_device_check_quick(tmp_path):
    # the population, conv and GPT parts run the scripts tested above; these two are its own
    result = _load("experiments/benchmarks/device_check.py", "device_check").main(
        ["--quick", "--parts", "w2", "epoch", "--out", str(tmp_path)])
    assert set(result["parts"]) == {"w2", "epoch"} and all(s > 0 for s in result["seconds"].values())
    w2 = result["parts"]["w2"]
    assert set(w2["peak_gflops"]) == {"float32", "bfloat16"} and w2["bfloat16_speedup"] > 0
    assert all(0 < r["fraction_of_peak"] for r in w2["rows"])
    assert [r["contender"] for r in result["parts"]["epoch"]["rows"]] == ["per-step loop (reference)", "fused epoch (make_epoch)"]
    assert (tmp_path / "device_check.md").read_text().startswith("device check on ")
