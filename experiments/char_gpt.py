"""A nanoGPT-style character-level GPT, trained by iterations on the general loop (``jaxnets.train.loop``).

    python experiments/char_gpt.py
    python experiments/char_gpt.py --quick                 # tiny, to check the script runs
    python experiments/char_gpt.py --stop-at 600           # "killed" after 600 iterations...
    python experiments/char_gpt.py --resume                # ...resumed from its best checkpoint

Corpus: the docstrings of the Python standard library's top-level modules
(``<stdlib>/*.py``, sorted by name; module, class and function docstrings
read with ``ast``, nothing imported), joined by blank lines. It is real
English technical prose, it is on every machine that runs this script, and
it is under the PSF license; no download is possible here and the repository
ships no corpus of that size. Its size, file count and SHA-256 are recorded
(they move with the Python version). The last ``val_fraction`` of the
characters is held out.

Everything runs on :func:`jaxnets.train.loop` (no hand-written training loop):

* source: :class:`jaxnets.train.Sampler`, random windows of the training
  text drawn on the device per step (nanoGPT's ``get_batch``), ``(accumulate,
  batch_size, context)`` of them: ``accumulate`` micro-batches per step;
* model: ``TiedEmbedding(V, D, PositionalEmbedding, Dropout, TransformerBlock(causal, drop_prob) x L, LayerNorm)``
  (input and output embeddings tied; GPT-2 initialisation);
* gradient: :func:`jaxnets.train.accumulate_gradients` (the mean gradient
  of the ``accumulate`` micro-batches, one at a time in a ``lax.scan``, inside
  the step: one loop step is one optimiser update);
* optimiser: ``clip_by_global_norm`` then AdamW under
  ``optax.inject_hyperparams`` (so the loop logs ``learning_rate``), warmup
  + cosine schedule, weight decay on matrices only (an optax mask);
* callbacks: :class:`jaxnets.train.Evaluate` every ``eval_every``
  iterations (held-out and training windows, evaluation mode),
  :class:`jaxnets.checkpoint.Checkpoint` saving when ``val_loss`` improves
  and resuming from the best checkpoint (``--resume``);
* sampling at the end: :func:`jaxnets.generate.sample` (key/value cache).

One *iteration* is one loop step, one optimiser update (over ``accumulate``
micro-batches), so ``--max-iters``, ``--eval-every``, ``--log-every`` and the
history's ``step`` all count iterations. Also measured, interleaved in the
same process: iterations per second of the loop against the same step as a
hand loop of jitted steps. Writes
``metrics.json`` and ``loss.png`` to ``--out``; checkpoints go to
``<out>-checkpoints`` (kept across runs, so that ``--resume`` finds them).
"""

from __future__ import annotations

import ast
import dataclasses
import glob
import hashlib
import math
import os
import shutil
import sys
import sysconfig
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved_medians, parse_config, pyplot, require_positive, run_record, save_figure, \
    write_json_atomic  # noqa: E402


@dataclasses.dataclass
class Config:
    # data
    val_fraction: float = 0.1  # the last share of the corpus, held out
    corpus_files: int = 0  # stdlib modules read (sorted by name); 0: all of them
    context: int = 64  # characters per window (nanoGPT's block_size)
    batch_size: int = 16  # windows per micro-batch
    # model
    layers: int = 3
    heads: int = 4
    width: int = 96
    dropout: float = 0.2
    # optimisation
    max_iters: int = 1500  # optimiser updates
    accumulate: int = 2  # micro-batches per update (train.accumulate_gradients, inside the step)
    learning_rate: float = 2e-3  # peak
    min_learning_rate: float = 2e-4  # the cosine's end
    warmup_iters: int = 100
    weight_decay: float = 0.1  # on matrices only
    beta2: float = 0.99
    grad_clip: float = 1.0
    # evaluation, logging, checkpoints
    eval_every: int = 150  # iterations between evaluations (and checkpoint decisions)
    eval_windows: int = 256  # held-out windows scored per evaluation (and as many training windows)
    log_every: int = 25  # iterations per history row
    resume: bool = False  # resume from the best checkpoint in <out>-checkpoints (else start afresh)
    stop_at: int = 0  # stop after this many iterations, as if killed (0: run to max_iters)
    # sampling
    prompt: str = "Return the "
    sample_chars: int = 52  # prompt + sample fit the context (the cache cannot slide)
    temperature: float = 0.8
    top_k: int = 20
    # speed: loop vs hand loop of jitted steps, interleaved
    timing_rounds: int = 3  # each times one call of the training run (eval_every iterations), so nothing recompiles
    # run
    seed: int = 0
    quick: bool = False
    out: str = "runs/char_gpt"


QUICK = dict(corpus_files=12, context=24, batch_size=8, layers=1, heads=2, width=32, max_iters=30, accumulate=2,
             warmup_iters=5, eval_every=10, eval_windows=32, log_every=5, sample_chars=12, timing_rounds=2)


def load_corpus(files: int = 0) -> tuple[str, list[str]]:
    """The docstrings of the standard library's top-level modules, in order of file name (module docstring)."""
    root = sysconfig.get_paths()["stdlib"]
    paths = sorted(glob.glob(os.path.join(root, "*.py")))
    paths = paths[:files] if files else paths
    texts = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    texts.append(doc)
    return "\n\n".join(texts), [os.path.basename(p) for p in paths]


def build_model(config, vocab: int):
    import jaxnets.layers as L
    from jaxnets import initializers

    init = initializers.normal(0.02)
    blocks = [L.TransformerBlock(config.width, config.heads, causal=True, drop_prob=config.dropout, w_init=init,
                                 residual_scale=1 / math.sqrt(2 * config.layers)) for _ in range(config.layers)]
    return L.TiedEmbedding(vocab, config.width, L.PositionalEmbedding(config.context), L.Dropout(config.dropout),
                           *blocks, L.LayerNorm(), embedding_init=init)


def build_optimizer(config):
    """chain(clip, inject_hyperparams(adamw)(schedule, mask=matrices)) and the schedule (over iterations)."""
    import jax
    import optax

    schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_iters, config.max_iters,
                                                  end_value=config.min_learning_rate)

    def matrices(params):  # decay weights of matmuls and embeddings; not biases, LayerNorm scales
        return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)

    adamw = optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
        learning_rate=schedule, b1=0.9, b2=config.beta2, weight_decay=config.weight_decay, mask=matrices)
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw), schedule


class Started:
    """A callback that notes where the run starts (after a checkpoint restored it): ``position``."""

    every, order, position = None, 0, None

    def on_start(self, run):
        self.position = run.position

    def __call__(self, progress):
        return None

    def on_end(self, progress, error):
        return None


def main(argv=None) -> dict:
    t_start = time.perf_counter()
    config = parse_config(Config, __doc__.splitlines()[0], argv)
    if config.quick:
        config = dataclasses.replace(config, **{k: v for k, v in QUICK.items()
                                                if getattr(config, k) == getattr(Config, k)})
    require_positive(config, "context", "batch_size", "layers", "heads", "width", "max_iters", "accumulate",
                     "learning_rate", "eval_every", "eval_windows", "log_every", "sample_chars", "temperature",
                     allow_zero=("dropout", "weight_decay", "warmup_iters", "min_learning_rate",
                                                 "stop_at", "timing_rounds", "corpus_files"))
    if config.eval_windows % config.batch_size:
        raise ValueError(f"--eval-windows ({config.eval_windows}) must be a multiple of --batch-size ({config.batch_size})")
    if config.eval_every % config.log_every:
        raise ValueError(f"--eval-every ({config.eval_every}) must be a multiple of --log-every ({config.log_every})")
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxnets
    from jaxnets import checkpoint, generate, losses, train

    # ---- data: the corpus, its split, random windows drawn on the device ----
    text, files = load_corpus(config.corpus_files)
    chars = sorted(set(text))
    vocab, index = len(chars), {c: i for i, c in enumerate(chars)}
    ids = np.array([index[c] for c in text], np.int32)
    split = int(len(ids) * (1 - config.val_fraction))
    train_ids, val_ids = jnp.asarray(ids[:split]), ids[split:]
    context, batch_size, k = config.context, config.batch_size, config.accumulate
    print(f"corpus: {len(text):,} characters of docstrings from {len(files)} stdlib modules, vocabulary {vocab}; "
          f"{split:,} for training, {len(val_ids):,} held out")

    def windows(key, step, corpus):  # nanoGPT's get_batch, on the device: k micro-batches per iteration
        start = jax.random.randint(key, (k, batch_size), 0, corpus.shape[0] - context - 1)
        tokens = corpus[start[..., None] + jnp.arange(context + 1)]  # (k, batch_size, context + 1)
        return {"x": tokens[..., :-1], "y": tokens[..., 1:]}

    def fixed_windows(data, n, seed):  # a fixed sample of windows, scored at every evaluation
        starts = np.random.default_rng(seed).integers(0, len(data) - context - 1, n)
        return np.asarray(data)[starts[:, None] + np.arange(context + 1)]

    source = train.Sampler(windows, data=train_ids)
    held_out = {"val": fixed_windows(val_ids, config.eval_windows, 1),
                "train": fixed_windows(np.asarray(train_ids), config.eval_windows, 2)}

    # ---- model, objective, optimiser ----
    model = build_model(config, vocab)
    optimizer, schedule = build_optimizer(config)
    ce = losses.softmax_cross_entropy_with_integer_labels

    def objective(params, batch, key, model_state):
        return ce(model.apply(params, batch["x"], key=key, train=True), batch["y"])

    step = train.make_step(objective, optimizer, gradient=train.accumulate_gradients(k), jit=False)

    def evaluate(state, data):  # mean loss over the fixed windows, in evaluation mode, a batch at a time
        def loss_of(w):
            w = w.reshape(-1, batch_size, context + 1)
            per_batch = jax.lax.map(lambda b: ce(model.apply(state.params, b[:, :-1]), b[:, 1:]), w)
            return per_batch.mean()

        return {"val_loss": loss_of(data["val"]), "train_eval_loss": loss_of(data["train"])}

    fresh = train.init_train_state(model, optimizer, (-1, context), seed=config.seed)
    num_params = jaxnets.count_params(fresh.params)
    print(f"model: {num_params:,} params; {k} micro-batches of {batch_size} x {context} characters per iteration")

    # ---- the run, on the loop ----
    folder = os.path.abspath(config.out) + "-checkpoints"
    if not config.resume and os.path.isdir(folder):
        shutil.rmtree(folder)  # a fresh run; --resume continues the folder's best checkpoint
    started = Started()
    callbacks = [train.Evaluate(evaluate, held_out, every=config.eval_every, prefix=""),
                 checkpoint.Checkpoint(folder, every=config.eval_every, keep=1, best="val_loss", save="improved",
                                       resume="best"),
                 started]
    run_config = {"char_gpt": {f.name: getattr(config, f.name) for f in dataclasses.fields(Config)
                               if f.name not in ("resume", "stop_at", "out", "quick", "timing_rounds",
                                                 "prompt", "sample_chars", "temperature", "top_k")}}
    iters = config.stop_at if config.stop_at else config.max_iters
    per_call = config.eval_every
    t_train = time.perf_counter()
    state, history = train.loop(step, fresh, source, steps=min(iters, config.max_iters), steps_per_call=per_call,
                                log_every=config.log_every, callbacks=callbacks, watch=("loss",), config=run_config)
    train_seconds = time.perf_counter() - t_train
    history = dict(history)
    resumed_from = started.position
    best = int(np.nanargmin(history["val_loss"]))
    print(("resumed from iteration %d; " % resumed_from if resumed_from else "") +
          f"iteration {history['step'][-1]}: train loss {history['train_loss'][-1]:.4f}, "
          f"best val loss {history['val_loss'][best]:.4f} at iteration {history['step'][best]} "
          f"({train_seconds:.1f} s)")

    # ---- sampling with the key/value cache, from the best checkpoint's params ----
    best_state = checkpoint.Checkpoints(folder, best="val_loss", lock=False)
    restored = best_state.restore(state, epoch=best_state.best_epoch())
    best_state.close()
    best_params = restored[0].params if restored is not None else state.params
    prompt = jnp.asarray([index.get(c, 0) for c in config.prompt], jnp.int32)
    n_new = min(config.sample_chars, context - len(config.prompt) + 1)
    out_ids = generate.sample(model, best_params, prompt, n_new, key=jax.random.key(config.seed),
                              temperature=config.temperature, top_k=min(config.top_k, vocab), use_cache=True)
    sample_text = "".join(chars[int(i)] for i in out_ids)
    print(f"sample: {sample_text!r}")

    # ---- speed: the loop against a hand loop of jitted steps, interleaved ----
    speed = None
    if config.timing_rounds:
        timed = per_call  # one call of the training run: the loop's program is the one already compiled
        key = fresh.key

        @jax.jit
        def by_hand_step(s, t, corpus):  # the same step, and the batch the Sampler would draw
            return step(s, windows(jax.random.fold_in(jax.random.fold_in(key, t), 1), t, corpus))

        def looped():
            s, _ = train.loop(step, fresh, source, steps=timed, steps_per_call=per_call, log_every=config.log_every)
            jax.block_until_ready(s)

        def by_hand():
            s = jax.tree_util.tree_map(jnp.copy, fresh)
            for t in range(timed):
                s, metrics = by_hand_step(s, jnp.int32(t), train_ids)
            jax.block_until_ready(s)

        medians = interleaved_medians({"loop": looped, "hand_loop": by_hand}, config.timing_rounds, timed)
        speed = {"loop_steps_per_second": 1 / medians["loop"], "hand_loop_steps_per_second": 1 / medians["hand_loop"],
                 "loop_over_hand_loop": medians["hand_loop"] / medians["loop"], "steps_per_run": timed,
                 "rounds": config.timing_rounds,
                 "note": "loop steps = iterations (one optimiser update over `accumulate` micro-batches each); "
                         "medians of interleaved rounds"}
        print(f"speed: loop {speed['loop_steps_per_second']:.1f} iterations/s, hand loop of jitted steps "
              f"{speed['hand_loop_steps_per_second']:.1f} iterations/s (loop / hand = {speed['loop_over_hand_loop']:.2f}x)")

    # ---- figure and numbers ----
    os.makedirs(config.out, exist_ok=True)
    iterations = history["step"]
    plotted = False
    plt = pyplot()
    if plt is not None:
        fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=(10, 4))
        ax.plot(iterations, history["train_loss"], label="train (training mode, mean over the row's steps)")
        for name, label in (("train_eval_loss", "train (evaluation mode)"), ("val_loss", "held out")):
            xs = [i for i, v in zip(iterations, history[name]) if not math.isnan(v)]
            ax.plot(xs, [v for v in history[name] if not math.isnan(v)], marker="o", label=label)
        if resumed_from:
            ax.axvline(resumed_from, color="gray", ls="--", label="resumed (best checkpoint)")
        ax.set(xlabel="iteration", ylabel="cross-entropy (nats per character)", title="char GPT on stdlib docstrings")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax_lr.plot(iterations, history["learning_rate"])
        ax_lr.set(xlabel="iteration", ylabel="learning rate (logged by the loop)", title="warmup + cosine")
        ax_lr.grid(alpha=0.3)
        save_figure(plt, fig, os.path.join(config.out, "loss.png"))
        plotted = True
    record = {**run_record(config),
              "corpus": {"source": "docstrings of <stdlib>/*.py (ast)", "files": len(files), "characters": len(text),
                         "sha256": hashlib.sha256(text.encode()).hexdigest(), "vocabulary": vocab,
                         "train_characters": int(split), "val_characters": int(len(val_ids))},
              "num_params": num_params, "iterations": history["step"][-1], "resumed_from_iteration": resumed_from,
              "best_val_loss": history["val_loss"][best], "best_iteration": history["step"][best],
              "final_train_loss": history["train_loss"][-1],
              "val_bits_per_char": history["val_loss"][best] / math.log(2),
              "train_seconds": train_seconds, "sample": sample_text, "speed": speed, "plotted": plotted,
              "checkpoints": folder, "history": history, "wall_seconds": time.perf_counter() - t_start}
    write_json_atomic(os.path.join(config.out, "metrics.json"), record)
    print(f"wrote {os.path.join(config.out, 'metrics.json')}" + (", loss.png" if plotted else ""))
    return record


if __name__ == "__main__":
    main()
