"""A GPT training step at research scale: jaxnets against raw JAX, flax.linen and PyTorch, per step and fused.

    python experiments/benchmarks/transformer.py            # full run
    python experiments/benchmarks/transformer.py --quick    # a tiny model, two rounds: checks the script

The model is nanoGPT's, without dropout: token and learned position
embeddings, ``layers`` pre-LayerNorm blocks (causal multi-head attention,
a 4x GELU MLP, exact GELU), a final LayerNorm and an output head tied to the
token embedding; softmax cross-entropy on next characters; AdamW (lr 3e-4,
weight decay 0.1). Default size: vocabulary 96, context 128, width 256, 4
layers of 4 heads, batch 16 (about 3.2M params).

Contenders, in one process, interleaved over ``--rounds`` rounds (median
seconds per training step):

* raw JAX (the reference): the model written directly, a dict of arrays,
  one fused ``x @ W_qkv`` projection and ``einsum`` attention, as a careful
  user writes it; ``jax.value_and_grad``; ``optax.adamw``; jitted with the
  params and optimizer state donated; started from the jaxnets model's
  params, so its first loss equals jaxnets' (checked);
* jaxnets, autodiff: ``TiedEmbedding(PositionalEmbedding, TransformerBlock x L,
  LayerNorm)`` and ``train.make_train_step``;
* jaxnets, hand rules: the same model through ``backprop.hand_gradients``
  (``jax.grad`` runs the layers' hand-derived rules);
* flax.linen, where installed: ``nn.Embed`` (``attend`` for the tied head),
  ``nn.MultiHeadDotProductAttention`` with ``nn.make_causal_mask``,
  ``nn.LayerNorm(epsilon=1e-5)``, ``nn.Dense``; the same optax step;
* PyTorch eager, where installed (``_torch.py``): nanoGPT's modules,
  ``F.scaled_dot_product_attention(is_causal=True)``, ``torch.optim.AdamW``,
  on the raw step's initial weights (its first loss is checked against it);
  per step only (eager PyTorch has no fused form).

Per step: a Python loop of jitted steps on one device-resident batch. Fused:
``--fused`` steps per call, each drawing random windows of a random corpus
on the device (nanoGPT's ``get_batch``): a ``lax.scan`` of the step for raw
JAX and flax, ``jaxnets.train.loop`` over a ``Sampler`` for jaxnets. Also
reports each step's compile time and XLA's cost analysis (flops, bytes
accessed). PyTorch is not a dependency of this repository: without it the
PyTorch row is left out and the header says so. Writes ``transformer.json`` and ``transformer.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

import _torch
import _workloads as W
from _common import interleaved_medians, write_results

FULL = {"vocab": 96, "context": 128, "width": 256, "layers": 4, "heads": 4, "batch": 16}
QUICK = {"vocab": 11, "context": 8, "width": 16, "layers": 1, "heads": 2, "batch": 2}


def jaxnets_model(size):
    import jaxnets.layers as L

    blocks = [L.TransformerBlock(size["width"], size["heads"], causal=True) for _ in range(size["layers"])]
    return L.TiedEmbedding(size["vocab"], size["width"], L.PositionalEmbedding(size["context"]), *blocks, L.LayerNorm())


def raw_params(p) -> dict:
    """The jaxnets GPT's params as the raw step's dict (copied: the raw step donates its buffers)."""
    blocks = []
    for name in sorted(k for k in p if k.startswith("transformer_block_")):
        att, mlp = p[name]["residual_0"], p[name]["residual_1"]
        a = att["attention_0"]
        blocks.append({
            "ln1": dict(att["layer_norm_0"]), "ln2": dict(mlp["layer_norm_0"]),
            "w_qkv": jnp.concatenate([a["query"]["w"], a["key"]["w"], a["value"]["w"]], axis=1),
            "b_qkv": jnp.concatenate([a["query"]["b"], jnp.zeros_like(a["query"]["b"]), a["value"]["b"]]),
            "w_o": a["out"]["w"], "b_o": a["out"]["b"],
            "w_1": mlp["dense_0"]["w"], "b_1": mlp["dense_0"]["b"], "w_2": mlp["dense_1"]["w"], "b_2": mlp["dense_1"]["b"]})
    tree = {"wte": p["embedding_0"]["table"], "wpe": p["positional_embedding_0"]["table"], "ln_f": dict(p["layer_norm_0"]),
            "blocks": blocks}
    return jax.tree_util.tree_map(jnp.copy, tree)


def _layer_norm(x, p, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def raw_forward(p, tokens, heads):
    b, t = tokens.shape
    h = p["wte"][tokens] + p["wpe"][:t]
    d = h.shape[-1]
    mask = jnp.tril(jnp.ones((t, t), bool))
    for blk in p["blocks"]:
        qkv = _layer_norm(h, blk["ln1"]) @ blk["w_qkv"] + blk["b_qkv"]
        q, k, v = (a.reshape(b, t, heads, d // heads) for a in jnp.split(qkv, 3, axis=-1))
        s = jnp.einsum("btnh,bsnh->bnts", q, k) / math.sqrt(d // heads)
        w = jax.nn.softmax(jnp.where(mask, s, -jnp.inf), axis=-1)
        o = jnp.einsum("bnts,bsnh->btnh", w, v).reshape(b, t, d)
        h = h + o @ blk["w_o"] + blk["b_o"]
        m = jax.nn.gelu(_layer_norm(h, blk["ln2"]) @ blk["w_1"] + blk["b_1"], approximate=False)
        h = h + m @ blk["w_2"] + blk["b_2"]
    return _layer_norm(h, p["ln_f"]) @ p["wte"].T


def raw_step_fn(optimizer, heads):
    def loss_fn(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(raw_forward(params, x, heads), y).mean()

    return W.optax_step(loss_fn, optimizer)


def flax_gpt(size):
    """nanoGPT in flax.linen as its users write it, or None when flax is not installed."""
    try:
        import flax.linen as nn
    except ImportError:
        return None
    width, heads = size["width"], size["heads"]

    class Block(nn.Module):
        @nn.compact
        def __call__(self, h, mask):
            a = nn.MultiHeadDotProductAttention(num_heads=heads, qkv_features=width)(nn.LayerNorm(epsilon=1e-5)(h),
                                                                                    mask=mask)
            h = h + a
            m = nn.Dense(width)(nn.gelu(nn.Dense(4 * width)(nn.LayerNorm(epsilon=1e-5)(h)), approximate=False))
            return h + m

    class GPT(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            embed = nn.Embed(size["vocab"], width)
            pos = self.param("wpe", nn.initializers.normal(0.02), (size["context"], width))
            h = embed(tokens) + pos[: tokens.shape[1]]
            mask = nn.make_causal_mask(tokens)
            for _ in range(size["layers"]):
                h = Block()(h, mask)
            return embed.attend(nn.LayerNorm(epsilon=1e-5)(h))

    return GPT()


def flax_step_fn(module, optimizer):
    def loss_fn(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(module.apply({"params": params}, x), y).mean()

    return W.optax_step(loss_fn, optimizer)


def windows_fn(size):
    """nanoGPT's ``get_batch`` on the device: ``batch`` random windows of ``context + 1`` tokens."""
    context, batch = size["context"], size["batch"]

    def windows(key, corpus):
        start = jax.random.randint(key, (batch,), 0, corpus.shape[0] - context - 1)
        tokens = corpus[start[:, None] + jnp.arange(context + 1)]
        return tokens[:, :-1], tokens[:, 1:]

    return windows


def scanned(step, windows, count):
    """``count`` steps in one ``lax.scan``, step ``i`` drawing its batch with ``fold_in(key, i)``."""
    def run(params, opt_state, key, corpus):
        def body(carry, i):
            x, y = windows(jax.random.fold_in(key, i), corpus)
            params, opt_state, loss = step(*carry, x, y)
            return (params, opt_state), loss

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), jnp.arange(count))
        return params, opt_state, losses.mean()

    return jax.jit(run, donate_argnums=(0, 1))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="steps per round of the per-step contenders")
    parser.add_argument("--fused", type=int, default=5, help="steps per call of the fused contenders")
    parser.add_argument("--no-flax", action="store_true", help="leave flax.linen out even where installed")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out even where installed")
    parser.add_argument("--out", default="runs/benchmarks")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    rounds, steps, fused = (2, 2, 2) if args.quick else (args.rounds, args.steps, args.fused)

    from jaxnets import backprop, count_params, losses, train

    optimizer = optax.adamw(3e-4, weight_decay=0.1)
    ce = losses.softmax_cross_entropy_with_integer_labels
    rng = np.random.default_rng(0)
    corpus = jnp.asarray(rng.integers(0, size["vocab"], 20_000), jnp.int32)
    windows = windows_fn(size)
    x, y = windows(jax.random.key(1), corpus)
    shape = (-1, size["context"])

    model = jaxnets_model(size)
    hand_model = backprop.hand_gradients(model)
    state = train.init_train_state(model, optimizer, shape, seed=0)
    hand_state = train.init_train_state(hand_model, optimizer, shape, seed=0)
    params = raw_params(state.params)
    copy = lambda tree: jax.tree_util.tree_map(jnp.copy, tree)  # noqa: E731  (per-step runs donate what they get)
    fused_starts = (raw_params(state.params), copy(state), copy(hand_state))
    raw = raw_step_fn(optimizer, size["heads"])
    raw_step = jax.jit(raw, donate_argnums=(0, 1))
    jn_step = train.make_train_step(model, ce, optimizer)
    hand_step = train.make_train_step(hand_model, ce, optimizer)

    # the reference computes the same function: its loss at the shared start equals jaxnets'
    raw_loss = float(jax.jit(raw)(params, optimizer.init(params), x, y)[2])
    jn_loss = float(ce(model.apply(state.params, x), y))
    if not math.isclose(raw_loss, jn_loss, rel_tol=1e-5):
        raise AssertionError(f"the raw-JAX GPT is not the jaxnets GPT: loss {raw_loss} against {jn_loss}")

    compiled = {}
    raw_step, compiled["raw JAX step"] = W.compile_timed(raw_step, params, optimizer.init(params), x, y)
    jn_step, compiled["jaxnets step, autodiff"] = W.compile_timed(jn_step, state, x, y)
    hand_step, compiled["jaxnets step, hand rules"] = W.compile_timed(hand_step, hand_state, x, y)
    contenders = {
        "raw JAX step (reference)": W.looped(raw_step, (params, optimizer.init(params)), (x, y), steps),
        "jaxnets step, autodiff": W.looped(jn_step, (state,), (x, y), steps),
        "jaxnets step, hand rules": W.looped(hand_step, (hand_state,), (x, y), steps),
    }
    module = None if args.no_flax else flax_gpt(size)
    if module is not None:
        flax_params = module.init(jax.random.key(0), x)["params"]
        flax_fused_start = copy(flax_params)
        flax_step, compiled["flax.linen step"] = W.compile_timed(jax.jit(flax_step_fn(module, optimizer), donate_argnums=(0, 1)),
                                                                 flax_params, optimizer.init(flax_params), x, y)
        contenders["flax.linen step"] = W.looped(
            flax_step, (jax.tree_util.tree_map(jnp.copy, flax_params), optimizer.init(flax_params)), (x, y), steps)
    torch = None if args.no_torch else _torch.torch_or_none()
    if torch is not None:
        torch_loss, contenders["PyTorch eager step"] = _torch.gpt(params, size, x, y, steps)
        if not math.isclose(torch_loss, raw_loss, rel_tol=1e-4):
            raise AssertionError(f"the PyTorch GPT is not the raw-JAX GPT: loss {torch_loss} against {raw_loss}")
    per_step = interleaved_medians(contenders, rounds, steps)

    # fused: `fused` steps per call, each drawing its windows on the device
    key = jax.random.key(2)
    raw_fused = scanned(raw, windows, fused)
    source = train.Sampler(lambda k, step, data: dict(zip("xy", windows(k, data))), data=corpus)
    jn_objective = train.objective_from_loss(model, ce)
    hand_objective = train.objective_from_loss(hand_model, ce)

    def loop_of(objective, start):
        step_fn = train.make_step(lambda p, b, k, s: objective(p, (b["x"], b["y"]), k, s), optimizer, jit=False)

        def run():
            out, _ = train.loop(step_fn, start, source, steps=fused, steps_per_call=fused, log_every=fused)
            jax.block_until_ready(out)
        return run

    fused_contenders = {
        "raw JAX, fused (reference)": W.looped(raw_fused, (fused_starts[0], optimizer.init(fused_starts[0])),
                                                (key, corpus), 1),
        "jaxnets train.loop, autodiff": loop_of(jn_objective, fused_starts[1]),
        "jaxnets train.loop, hand rules": loop_of(hand_objective, fused_starts[2]),
    }
    if module is not None:
        flax_fused = scanned(flax_step_fn(module, optimizer), windows, fused)
        fused_contenders["flax.linen, fused"] = W.looped(
            flax_fused, (flax_fused_start, optimizer.init(flax_fused_start)), (key, corpus), 1)
    fused_times = interleaved_medians(fused_contenders, rounds, fused)

    rows, costs, text = W.step_report(per_step, fused_times, compiled)
    print(f"GPT {size}, AdamW; {count_params(fused_starts[1].params):,} params; {steps} steps x {rounds} rounds per step, "
          f"{fused} steps per fused call; backend {jax.default_backend()}; flax {'yes' if module else 'not run'}; "
          f"PyTorch {torch.__version__ + ' eager, ' + str(torch.get_num_threads()) + ' threads' if torch else 'not run'}")
    print(text)
    result = {"benchmark": "transformer", **W.environment(), "size": size, "rounds": rounds, "steps_per_round": steps,
              "fused_steps": fused, "quick": args.quick, "rows": rows, "xla_cost": costs,
              "initial_loss": {"raw": raw_loss, "jaxnets": jn_loss},
              "torch": torch.__version__ if torch else None}
    write_results(args.out, "transformer", result, text)
    return result


if __name__ == "__main__":
    main()
