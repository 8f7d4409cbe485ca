"""The training loop: mlx-lm's ``tuner/trainer.py`` for a model that also reads images and video.

As mlx-lm's: batches from the dataset, ``nn.value_and_grad`` of a masked cross-entropy,
gradient accumulation, ``mx.eval(model.parameters(), optimizer.state)`` once an update,
validation every ``steps_per_eval``, adapters saved every ``steps_per_save`` (and numbered
copies). What differs, and why:

- A frozen vision tower runs outside the gradient: its features are computed and evaluated
  first and enter the loss as inputs, so none of its activations are kept for the backward.
- Gradient checkpointing wraps each decoder layer (and each vision layer when the tower
  trains) of this model alone: mlx-lm's patches the layer's class, which would reach every
  model in the process.
- A NaN or infinite loss stops the run before its update: the adapters are saved as they were
  after the last good step, and ``train`` raises ``TrainingStopped``.
- Every save is atomic (``adapters.save``). Steps are not compiled: each batch's images give
  the vision tower other shapes.
"""

import copy
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_map

from . import adapters
from .data import Batch, ChatDataset, iterate_batches


class TrainingStopped(RuntimeError):
    """The loss became NaN or infinite; the last good adapters are saved."""


@dataclass
class TrainingArgs:
    batch_size: int = 4
    iters: int = 100
    val_batches: int = 25  # -1: the whole validation set
    steps_per_report: int = 10
    steps_per_eval: int = 200
    steps_per_save: int = 100
    adapter_file: Path = Path("adapters/adapters.safetensors")
    grad_checkpoint: bool = False
    grad_accumulation_steps: int = 1
    train_vision: bool = False
    seed: Optional[int] = None


# -- the loss -----------------------------------------------------------------------------------
def vision_inputs(model, batch: Batch, frozen: bool) -> dict:
    """``Model.__call__``'s media arguments for a batch. A frozen tower's features are
    computed here, outside the gradient, and evaluated: its activations are freed at once."""
    media = dict(batch.media, downsample_mode=batch.downsample_mode)
    if not frozen:
        return media
    features = {}
    for pixels, sizes, name in (("pixel_values", "target_sizes", "image_features"),
                                ("pixel_values_videos", "target_sizes_videos", "video_features")):
        if pixels in media:
            features[name] = mx.stop_gradient(model.encode_slices(media.pop(pixels), media[sizes], batch.downsample_mode))
    mx.eval(features)
    return {**media, **features}


def loss(model, ids: mx.array, mask: mx.array, media: dict):
    """Mean cross-entropy over the masked target tokens, and their count (mlx-lm's
    ``default_loss`` with the mask given per token)."""
    inputs, targets, weights = ids[:, :-1], ids[:, 1:], mask[:, 1:]
    # Only the masked-in positions reach the head: the same loss and gradients, without the
    # (B, L, vocab) logits (351 x 248k floats for one image question) and their gradient.
    rows = mx.array(np.flatnonzero(np.array(weights)), dtype=mx.uint32)
    logits = model(inputs, rows=rows, **media)
    ce = nn.losses.cross_entropy(logits.astype(mx.float32), targets.reshape(-1)[rows]) * weights.reshape(-1)[rows]
    ntoks = weights.sum()
    return ce.sum() / mx.maximum(ntoks, 1), ntoks


# -- gradient checkpointing ---------------------------------------------------------------------
def fork(cache):
    """A copy of a layer cache's state that a call can advance without touching ``cache``."""
    copied = copy.copy(cache)
    for key, value in vars(copied).items():
        if isinstance(value, list):
            setattr(copied, key, list(value))
    return copied


@functools.lru_cache(maxsize=None)
def checkpointed_class(cls: type) -> type:
    """``cls`` whose call recomputes its activations in the backward (``mx.checkpoint``).

    A layer cache (4.7 trains through one: it carries the canvas positions) is advanced by
    the call, so the recomputation would start from the state the first run left: each run
    starts from a copy of the state before, and the cache takes the first run's state after.
    """

    def __call__(self, *args, **kwargs):
        cache = kwargs.pop("cache", None)
        runs = []

        def inner(params, *args, **kwargs):
            self.update(params)
            if cache is not None:
                runs.append(fork(before))
                kwargs = dict(kwargs, cache=runs[-1])
            return cls.__call__(self, *args, **kwargs)

        before = fork(cache) if cache is not None else None
        out = mx.checkpoint(inner)(self.trainable_parameters(), *args, **kwargs)
        if cache is not None:
            vars(cache).update(vars(runs[0]))
        return out

    return type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__, "checkpoints": cls})


def checkpoint_layers(layers) -> None:
    """Checkpoint these layers (their class changes in place: names and weights stay)."""
    for layer in layers:
        if not hasattr(type(layer), "checkpoints"):
            layer.__class__ = checkpointed_class(type(layer))


def uncheckpoint_layers(layers) -> None:
    for layer in layers:
        if hasattr(type(layer), "checkpoints"):
            layer.__class__ = type(layer).checkpoints


def checkpointed_layers(model, train_vision: bool) -> list:
    layers = list(model.language_model.layers)
    if train_vision:
        layers += list(model.vision_tower.encoder.layers)
    return layers


# -- evaluation ---------------------------------------------------------------------------------
def evaluate(model, dataset: ChatDataset, batch_size: int, num_batches: int = -1) -> float:
    """Mean loss per answer token over ``num_batches`` batches (-1: all)."""
    model.eval()
    total, ntokens = mx.array(0.0), mx.array(0.0)
    batches = iterate_batches(dataset, batch_size)
    for k, batch in enumerate(batches):
        if num_batches != -1 and k >= num_batches:
            break
        value, toks = loss(model, batch.ids, batch.mask, vision_inputs(model, batch, True))
        total, ntokens = total + value * toks, ntokens + toks
        mx.eval(total, ntokens)
    return (total / mx.maximum(ntokens, 1)).item()


def report(line: str) -> None:
    print(line, flush=True)


# -- training -----------------------------------------------------------------------------------
def train(model, optimizer, train_set: ChatDataset, val_set: Optional[ChatDataset] = None,
          args: TrainingArgs = TrainingArgs(), training_callback=None, start: int = 0,
          print_fn: Callable[[str], None] = report) -> None:
    """Train ``model``'s trainable parameters for ``args.iters`` iterations (numbered on from
    ``start`` when a run resumes). ``training_callback`` is mlx-lm's ``TrainingCallback``."""
    if args.grad_accumulation_steps < 1:
        raise ValueError("--grad-accumulation-steps must be at least 1")
    frozen = not args.train_vision
    layers = checkpointed_layers(model, args.train_vision) if args.grad_checkpoint else []
    checkpoint_layers(layers)
    value_and_grad = nn.value_and_grad(model, loss)
    batches = iterate_batches(train_set, args.batch_size, loop=True, seed=args.seed)
    model.train()
    losses, n_tokens, steps, train_time, trained_tokens, accumulated = 0.0, 0, 0, 0.0, 0, None
    adapter_file = Path(args.adapter_file)
    try:
        for it in range(start + 1, start + args.iters + 1):
            batch = next(batches)
            if val_set is not None and len(val_set) and (it == start + 1 or it % args.steps_per_eval == 0
                                                         or it == start + args.iters):
                tic = time.perf_counter()
                val_loss = evaluate(model, val_set, args.batch_size, args.val_batches)
                model.train()
                val_time = time.perf_counter() - tic
                print_fn(f"Iter {it}: Val loss {val_loss:.3f}, Val took {val_time:.3f}s")
                if training_callback is not None:
                    training_callback.on_val_loss_report({"iteration": it - 1, "val_loss": val_loss,
                                                         "val_time": val_time})

            tic = time.perf_counter()
            (value, toks), grad = value_and_grad(model, batch.ids, batch.mask, vision_inputs(model, batch, frozen))
            mx.eval(value, toks, grad)
            value, toks = value.item(), int(toks.item())
            if not math.isfinite(value):
                adapters.save(model, adapter_file, it - 1)
                raise TrainingStopped(
                    f"iteration {it}: the loss is {value}; stopped, and saved the adapters of the last good step "
                    f"to {adapter_file}. Lower --learning-rate, or check the examples of this batch")
            accumulated = grad if accumulated is None else tree_map(mx.add, accumulated, grad)
            if it % args.grad_accumulation_steps == 0 or it == start + args.iters:
                if args.grad_accumulation_steps > 1:
                    accumulated = tree_map(lambda g: g / args.grad_accumulation_steps, accumulated)
                optimizer.update(model, accumulated)
                mx.eval(model.parameters(), optimizer.state)
                accumulated = None
            losses += value
            n_tokens += toks
            steps += 1
            train_time += time.perf_counter() - tic

            if it % args.steps_per_report == 0 or it == start + args.iters:
                train_loss = losses / steps
                trained_tokens += n_tokens
                lr = optimizer.learning_rate
                lr = lr.item() if isinstance(lr, mx.array) else lr
                peak = mx.get_peak_memory() / 1e9
                print_fn(f"Iter {it}: Train loss {train_loss:.3f}, Learning Rate {lr:.3e}, "
                         f"It/sec {steps / train_time:.3f}, Tokens/sec {n_tokens / train_time:.3f}, "
                         f"Trained Tokens {trained_tokens}, Peak mem {peak:.3f} GB")
                if training_callback is not None:
                    training_callback.on_train_loss_report({
                        "iteration": it, "train_loss": train_loss, "learning_rate": lr,
                        "iterations_per_second": steps / train_time, "tokens_per_second": n_tokens / train_time,
                        "trained_tokens": trained_tokens, "peak_memory": peak})
                losses, n_tokens, steps, train_time = 0.0, 0, 0, 0.0

            if it % args.steps_per_save == 0:
                adapters.save(model, adapter_file, it)
                numbered = adapter_file.with_name(f"{it:07d}_{adapter_file.name}")
                adapters.save(model, numbered, it)
                print_fn(f"Iter {it}: Saved adapter weights to {adapter_file} and {numbered}.")
        adapters.save(model, adapter_file, start + args.iters)
        print_fn(f"Saved final weights to {adapter_file}.")
    finally:
        uncheckpoint_layers(layers)
        model.eval()
