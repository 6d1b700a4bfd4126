"""Generation: tokens per second with the key/value cache against recomputing the context, on a small GPT.

    python experiments/benchmarks/generation.py
    python experiments/benchmarks/generation.py --quick     # tiny sizes, to check the script runs

The model is nanoGPT's arrangement built from public layers:
``TiedEmbedding(vocab, width, PositionalEmbedding(context), Dropout, TransformerBlock x layers, LayerNorm)``
(vocab 96, context 512, width 128, 4 layers of 4 heads; random params: the
speed does not depend on what was learned). From a prompt of 16 tokens,
``jaxnets.generate.sample`` draws 256 new tokens (temperature 0.8, top-k 40)
for a batch of 8, once with ``use_cache=True`` (the prompt once, then one
position per token against the cached keys and values) and once with
``use_cache=False`` (each token runs the model on the window of the last
``min(context, P + n - 1)`` = 271 tokens). Both are one compiled program; the
first call of each compiles it and is not timed. Interleaved rounds, median
seconds per call; tokens per second = batch * new tokens / seconds. The two
draw the same tokens from the same key (checked here). Writes
``generation.json`` and ``generation.md`` to ``--out``.

Ratios are medians of one run; on a shared CPU they move with the load, so
record the machine's load beside them.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

import _workloads as W
import jaxnets.layers as L
from _common import interleaved_medians, write_results
from jaxnets import generate, initializers


def gpt(vocab, context, width, heads, layers):
    return L.TiedEmbedding(vocab, width, L.PositionalEmbedding(context), L.Dropout(0.2),
                           *[L.TransformerBlock(width, heads, causal=True, drop_prob=0.2, w_init=initializers.normal(0.02),
                                                residual_scale=1 / np.sqrt(2 * layers)) for _ in range(layers)],
                           L.LayerNorm(), embedding_init=initializers.normal(0.02))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--out", default="runs/benchmarks")
    args = parser.parse_args(argv)
    if args.quick:
        vocab, context, width, heads, layers, batch, prompt_length, new, rounds = 16, 32, 16, 2, 1, 2, 4, 8, 1
    else:
        vocab, context, width, heads, layers, batch, prompt_length, new, rounds = 96, 512, 128, 4, 4, 8, 16, args.new_tokens, args.rounds
    model = gpt(vocab, context, width, heads, layers)
    _, params = model.init(jax.random.key(0), (-1, context))
    prompt = jax.random.randint(jax.random.key(1), (batch, prompt_length), 0, vocab)
    key = jax.random.key(2)

    def run(use_cache):
        def call():
            return generate.sample(model, params, prompt, new, key=key, temperature=0.8, top_k=min(40, vocab),
                                   use_cache=use_cache).block_until_ready()

        return call

    contenders = {"recompute the context (reference)": run(False), "key/value cache": run(True)}
    same = bool(jnp.all(contenders["key/value cache"]() == contenders["recompute the context (reference)"]()))
    medians = interleaved_medians(contenders, rounds, 1)
    ref = medians["recompute the context (reference)"]
    rows = [{"contender": name, "seconds": t, "tokens_per_second": batch * new / t, "speedup": ref / t}
            for name, t in medians.items()]
    lines = ["| contender | seconds per call | tokens per second | speed-up |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['contender']} | {r['seconds']:.3f} | {r['tokens_per_second']:.0f} | {r['speedup']:.2f} |" for r in rows]
    table = "\n".join(lines)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"GPT vocab {vocab}, context {context}, width {width}, {layers} layers x {heads} heads; batch {batch}, prompt "
          f"{prompt_length}, {new} new tokens; {rounds} rounds, backend {jax.default_backend()}, load average {load}")
    print(table)
    print(f"key/value cache over recomputation: {ref / medians['key/value cache']:.2f}x tokens per second; "
          f"same tokens: {same}")
    result = {"benchmark": "generation", **W.environment(), "load_average_1min": load, "rounds": rounds, "quick": args.quick,
              "model": {"vocab": vocab, "context": context, "width": width, "heads": heads, "layers": layers},
              "batch": batch, "prompt_length": prompt_length, "new_tokens": new, "rows": rows,
              "cache_speedup": ref / medians["key/value cache"], "same_tokens": same}
    write_results(args.out, "generation", result, table)
    return result


if __name__ == "__main__":
    main()
