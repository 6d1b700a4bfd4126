"""Sequence to sequence addition (flax's seq2seq example): an LSTM encoder's final carry starts an LSTM decoder.

    python experiments/seq2seq_addition.py
    python experiments/seq2seq_addition.py --quick

A query is ``"a+b"`` with ``a, b`` uniform in ``[0, 10^digits)``, written
without padding (``"123+45"``); the answer is the digits of ``a + b``
followed by ``"$"`` (end), padded with ``"$"`` to ``digits + 2`` tokens.

Model, from public layers only:

* encoder: ``Embedding`` then ``LSTM(hidden, return_sequences=False,
  return_state=True, lengths_input=True)``: each query's true length is
  given, so its final carry ``(h, c)`` is the state after its own last
  character, whatever the padding;
* decoder: ``Embedding`` then ``LSTM(hidden, initial_state="input")`` on
  ``(tokens, h, c)``, then ``Dense(vocab)``. Training uses teacher forcing:
  the decoder reads ``"="`` and the answer shifted right;
* greedy decoding at test time: :func:`jaxnets.layers.LSTMCell` on the
  decoder LSTM's own params, stepped in ``lax.scan`` from the encoder's
  carry, each step fed the argmax of the previous one.

Trained with :func:`jaxnets.train.make_step` (Adam) in a plain jitted loop.
Prints the held-out exact-match accuracy of the greedy decoded answers and
writes ``metrics.json`` and ``training_curve.png`` to ``--out``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parse_config, pyplot, require_positive, run_record, save_figure, write_json_atomic  # noqa: E402

VOCAB = "0123456789+=$"  # "=" starts the decoder, "$" ends (and pads) the answer
ID = {c: i for i, c in enumerate(VOCAB)}


@dataclasses.dataclass
class Config:
    # task
    digits: int = 3
    test_size: int = 1000
    # model
    embed: int = 32
    hidden: int = 128
    # optimisation
    steps: int = 4000
    batch_size: int = 128
    learning_rate: float = 3e-3
    log_every: int = 100
    seed: int = 0
    quick: bool = False
    out: str = "runs/seq2seq_addition"


def encode(queries: list[str], answers: list[str], digits: int):
    """Queries as ids padded with "$" and their lengths; answers as decoder inputs and targets (ids)."""
    import numpy as np

    q_len, a_len = 2 * digits + 1, digits + 2
    q = np.full((len(queries), q_len), ID["$"], np.int32)
    lengths = np.array([len(s) for s in queries], np.int32)
    target = np.full((len(answers), a_len), ID["$"], np.int32)
    for i, (s, a) in enumerate(zip(queries, answers)):
        q[i, :len(s)] = [ID[c] for c in s]
        target[i, :len(a)] = [ID[c] for c in a]
    dec_in = np.concatenate([np.full((len(answers), 1), ID["="], np.int32), target[:, :-1]], axis=1)
    return q, lengths, dec_in, target


def make_problems(rng, n: int, digits: int):
    a, b = rng.integers(0, 10 ** digits, n), rng.integers(0, 10 ** digits, n)
    return [f"{x}+{y}" for x, y in zip(a, b)], [f"{x + y}$" for x, y in zip(a, b)]


def main(argv=None) -> dict:
    t_start = time.perf_counter()
    config = parse_config(Config, __doc__.splitlines()[0], argv)
    if config.quick:
        config = dataclasses.replace(config, digits=2, steps=300, hidden=32, embed=16, test_size=200, log_every=50)
    require_positive(config, "digits", "test_size", "embed", "hidden", "steps", "batch_size", "learning_rate",
                     "log_every")
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import jaxnets.layers as L
    from jaxnets import losses, train

    v, h = len(VOCAB), config.hidden
    enc_embed, dec_embed = L.Embedding(v, config.embed), L.Embedding(v, config.embed)
    encoder = L.LSTM(h, return_sequences=False, return_state=True, lengths_input=True)
    decoder = L.LSTM(h, initial_state="input")
    cell = L.LSTMCell(h)  # one step of the decoder, on its params
    head = L.Dense(v)
    q_len, a_len = 2 * config.digits + 1, config.digits + 2

    keys = jax.random.split(jax.random.key(config.seed), 5)
    params = {
        "enc_embed": enc_embed.init(keys[0], (-1, q_len))[1],
        "encoder": encoder.init(keys[1], ((-1, q_len, config.embed), (-1,)))[1],
        "dec_embed": dec_embed.init(keys[2], (-1, a_len))[1],
        "decoder": decoder.init(keys[3], ((-1, a_len, config.embed), (-1, h), (-1, h)))[1],
        "head": head.init(keys[4], (-1, h))[1],
    }

    def encode_queries(p, queries, lengths):
        _, (h_end, c_end) = encoder.apply(p["encoder"], (enc_embed.apply(p["enc_embed"], queries), lengths))
        return h_end, c_end  # the carry after each query's own last character

    def objective(p, batch, key, model_state):
        del key, model_state
        queries, lengths, dec_in, target = batch
        h_end, c_end = encode_queries(p, queries, lengths)
        hs = decoder.apply(p["decoder"], (dec_embed.apply(p["dec_embed"], dec_in), h_end, c_end))  # teacher forcing
        logits = head.apply(p["head"], hs)  # (B, a_len, V)
        loss = losses.softmax_cross_entropy_with_integer_labels(logits.reshape(-1, v), target.reshape(-1))
        exact = jnp.mean(jnp.all(jnp.argmax(logits, -1) == target, axis=-1).astype(jnp.float32))
        return loss, {"teacher_forced_exact": exact}

    @jax.jit
    def greedy(p, queries, lengths):
        carry = encode_queries(p, queries, lengths)

        def step(state, _):
            carry, token = state
            carry, y = cell.apply(p["decoder"], (carry, dec_embed.apply(p["dec_embed"], token)))
            token = jnp.argmax(head.apply(p["head"], y), axis=-1).astype(jnp.int32)
            return (carry, token), token

        start = jnp.full(queries.shape[:1], ID["="], jnp.int32)
        _, tokens = jax.lax.scan(step, (carry, start), None, length=a_len)
        return jnp.swapaxes(tokens, 0, 1)  # (B, a_len)

    optimizer = optax.adam(optax.cosine_decay_schedule(config.learning_rate, config.steps, alpha=0.05))
    state = train.TrainState.create(params, optimizer, seed=config.seed)
    step = train.make_step(objective, optimizer)

    rng = np.random.default_rng(config.seed)
    test_q, test_a = make_problems(np.random.default_rng(config.seed + 10_000), config.test_size, config.digits)
    test = [jnp.asarray(a) for a in encode(test_q, test_a, config.digits)]
    curve = {"step": [], "loss": [], "test_exact_match": []}
    started, losses_seen = time.perf_counter(), []
    for i in range(1, config.steps + 1):
        batch = tuple(jnp.asarray(a) for a in encode(*make_problems(rng, config.batch_size, config.digits),
                                                     config.digits))
        state, metrics = step(state, batch)
        losses_seen.append(metrics["loss"])
        if i % config.log_every == 0 or i == config.steps:
            decoded = greedy(state.params, test[0], test[1])
            acc = float(jnp.mean(jnp.all(decoded == test[3], axis=-1)))
            curve["step"].append(i)
            curve["loss"].append(float(np.mean([float(x) for x in losses_seen])))
            curve["test_exact_match"].append(acc)
            losses_seen = []
            print(f"step {i:5d}: train loss {curve['loss'][-1]:.4f}, held-out exact match (greedy) {acc:.3f}")
    train_seconds = time.perf_counter() - started
    decoded = np.asarray(greedy(state.params, test[0], test[1]))
    examples = []
    for row, q, a in list(zip(decoded, test_q, test_a))[:5]:
        text = "".join(VOCAB[t] for t in row)
        examples.append({"query": q, "answer": a, "decoded": text})
        print(f"  {q:>9s} = {text.split('$')[0]:<5s} (expected {a[:-1]})")
    accuracy = curve["test_exact_match"][-1]
    print(f"held-out exact-match accuracy of greedy decoding: {accuracy:.4f} on {config.test_size} sums "
          f"({config.digits}-digit operands), {config.steps} steps in {train_seconds:.0f} s")

    plotted = False
    os.makedirs(config.out, exist_ok=True)
    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(curve["step"], curve["loss"], label="train loss (teacher forcing)")
        ax.set(xlabel="step", ylabel="cross-entropy per token", yscale="log", title="seq2seq addition")
        ax2 = ax.twinx()
        ax2.plot(curve["step"], curve["test_exact_match"], color="C1", label="held-out exact match (greedy)")
        ax2.set(ylabel="exact match", ylim=(0, 1))
        ax.grid(alpha=0.3)
        fig.legend(loc="center right")
        save_figure(plt, fig, os.path.join(config.out, "training_curve.png"))
        plotted = True
    record = {**run_record(config), "test_exact_match": accuracy, "curve": curve, "examples": examples,
              "train_seconds": train_seconds, "plotted": plotted, "wall_seconds": time.perf_counter() - t_start}
    write_json_atomic(os.path.join(config.out, "metrics.json"), record)
    print(f"wrote {os.path.join(config.out, 'metrics.json')}")
    return record


if __name__ == "__main__":
    main()
