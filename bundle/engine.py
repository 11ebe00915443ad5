"""Engine glue the configs use around stock MONAI trainers, evaluators and handlers.

- :class:`TextInferer`: passes the per-item sentences (or a fixed prompt, e.g. MONAI Label's
  ``text_prompt``) to the network next to the image; optionally averages over the training symmetries
  with the sentence rewritten (test-time augmentation that keeps the text true). :class:`PrepareTextBatch`
  hands it the sentences and the items' stored orientation.
- :class:`AtomicCheckpointSaver`: MONAI's ``CheckpointSaver`` writing every file to a temporary name
  and renaming it, so a kill never leaves a half-written checkpoint.
- :class:`BestMetricState` + :func:`latest_checkpoint`: what ``--resume`` needs beyond model,
  optimizer and trainer counters (the best validation metric and the best-model saver's memory).
- :class:`EpochSummary`: the one console line per epoch (loss, training and validation metrics, best so
  far, learning rate, time); ignite's own INFO lines are silenced in configs/logging.conf.
- :class:`InputErrorHandler`: the first ``EXCEPTION_RAISED`` handler of every engine, so a user's input
  error ends the run with its one ``ERROR:`` line (bundle/errors.py), not a logged traceback.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Events
from ignite.handlers import ProgressBar as _IgniteProgressBar
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.engines import PrepareBatchExtraInput
from monai.inferers import SimpleInferer

from . import dihedral
from .errors import BundleInputError, find_input_error
from .utils import atomic_write, check_state_dict, is_terminal, read_checkpoint

__all__ = [
    "InputErrorHandler",
    "EpochSummary",
    "quiet_other_ranks",
    "TextInferer",
    "PrepareTextBatch",
    "ProgressBar",
    "AtomicCheckpointSaver",
    "CheckedCheckpointLoader",
    "BestMetricState",
    "ResumeCheckpointLoader",
    "latest_checkpoint",
    "log_parameters",
    "print_evaluation",
    "print_training_summary",
    "rank_handlers",
]

logger = logging.getLogger(__name__)


class TextInferer(SimpleInferer):
    """``network(inputs, text=...)`` with the batch's sentences, or ``text`` for every image when given.

    With ``symmetries`` other than ``"none"`` it is also a test-time augmentation that keeps the text
    true: the network sees the picture under the identity and under every symmetry of that set of
    :data:`bundle.dihedral.SYMMETRY_SETS` (the set it was trained with), each time with the location
    words moved with the picture (:func:`bundle.dihedral.rewrite_locations`); each prediction is moved
    back, and the class probabilities are averaged. It returns their log, so a softmax or an argmax
    after it reads them as it reads logits.

    Args:
        text: fixed sentence overriding the items' text (None or empty: use the items' text, or the
            network's modality default when the batch carries none).
        symmetries: ``"none"`` (one pass) or a name of :data:`bundle.dihedral.SYMMETRY_SETS`.
        modality: picks the location convention ("he": the viewer's sides; "cxr" / "ct": the patient's).
        reads_text: False for an image-only network (the baselines): it is called as ``network(inputs)``.
    """

    def __init__(
        self, text: str | None = None, symmetries: str = "none", modality: str = "he", reads_text: bool = True
    ) -> None:
        super().__init__()
        self.reads_text = bool(reads_text)
        self.text = text.strip() if isinstance(text, str) and text.strip() else None
        self.symmetries = ("identity", *(s for s in dihedral.symmetry_set(symmetries) if s != "identity"))
        self.convention = "image" if modality == "he" else "radiological"

    def __call__(
        self, inputs: torch.Tensor, network: Any, *args: Any, text: Any = None, orientation: Any = None, **kwargs: Any
    ) -> Any:
        text = self.text if self.text is not None else text if self.reads_text else None

        def run(x: torch.Tensor, sentences: Any) -> torch.Tensor:
            if not self.reads_text:
                return network(x, *args, **kwargs)
            if orientation is not None:  # the location prompt draws the sentence's places on the stored array
                kwargs["orientation"] = orientation
            return network(x, *args, text=sentences, **kwargs)

        if len(self.symmetries) == 1:
            return run(inputs, text)
        b = inputs.shape[0]
        texts = [text] * b if text is None or isinstance(text, str) else list(text)
        orientations = [orientation] * b if orientation is None or isinstance(orientation, str) else list(orientation)
        square = inputs.shape[-1] == inputs.shape[-2]
        followable = [set(dihedral.allowed(self.symmetries, t or "", self.convention, square)) for t in set(texts)]
        names = [n for n in self.symmetries if all(n in ok for ok in followable)]
        probs = None
        for name in names:
            display = dihedral.SYMMETRIES[name]
            stored = [dihedral.to_stored(display, o or "standard") for o in orientations]
            x = torch.stack([dihedral.apply(inputs[i], stored[i]) for i in range(b)])
            moved = [dihedral.rewrite_locations(t, display, self.convention) if t else t for t in texts]
            p = torch.softmax(run(x, moved if text is not None else None), dim=1)
            p = torch.stack([dihedral.apply(p[i], dihedral.inverse(stored[i])) for i in range(b)])
            probs = p if probs is None else probs + p
        return torch.log((probs / len(names)).clamp_min(1e-12))


class PrepareTextBatch(PrepareBatchExtraInput):
    """MONAI's ``PrepareBatchExtraInput`` passing the items' ``text``, and their ``orientation`` when they carry one."""

    def __init__(self) -> None:
        super().__init__(extra_keys={"text": "text"})

    def __call__(self, batchdata: dict[str, Any], device: Any = None, non_blocking: bool = False, **kwargs: Any) -> tuple:
        image, label, args, extra = super().__call__(batchdata, device, non_blocking, **kwargs)
        if "orientation" in batchdata:
            extra["orientation"] = batchdata["orientation"]
        return image, label, args, extra


class InputErrorHandler:
    """Re-raises an engine's exception before MONAI's handlers log it, a user's input error as itself.

    ignite calls the ``EXCEPTION_RAISED`` handlers in the order they were attached and stops at the first
    that raises; listed first in an engine's handlers, this one raises the :class:`BundleInputError`
    found in the exception chain (or the exception itself), so ``StatsHandler`` never logs a traceback
    and ``CheckpointSaver`` writes no "final" checkpoint of a run that failed on its input. With
    ``LCPDN_TRACEBACK=1`` it stands aside.
    """

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EXCEPTION_RAISED, self)

    def __call__(self, engine: Any, e: BaseException) -> None:
        message = find_input_error(e)
        if message is None or os.environ.get("LCPDN_TRACEBACK"):
            raise e
        raise BundleInputError(message) from e


def metric_label(name: str) -> str:
    """``val_mean_dice`` -> ``val Dice``, ``train_loss_avg`` -> ``train loss``: the words of the epoch line."""
    words = {"dice": "Dice", "iou": "IoU"}
    return " ".join(words.get(w, w) for w in name.split("_") if w not in ("mean", "avg"))


class EpochSummary:
    """One log line per training epoch, e.g.
    ``epoch 3/20: train loss 0.8652, train Dice 0.5961, val Dice 0.6210, val IoU 0.4577 (best 0.6210, epoch 3),
    lr 9.4e-04, 31 s``. List it after the ``ValidationHandler`` so the epoch's validation has run.

    Args:
        validator: the evaluator run by ``ValidationHandler`` (None: training metrics only).
    """

    def __init__(self, validator: Any = None) -> None:
        self.validator = validator
        self._start, self._lr = 0.0, None

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _epoch_started(self, engine: Any) -> None:
        self._start = time.perf_counter()
        optimizer = getattr(engine, "optimizer", None)
        self._lr = optimizer.param_groups[0]["lr"] if optimizer is not None else None

    def __call__(self, engine: Any) -> None:
        values = dict(engine.state.metrics or {})
        best = ""
        v = self.validator
        if v is not None and getattr(v.state, "epoch", None) == engine.state.epoch:  # validated this epoch
            values.update(v.state.metrics or {})
            if getattr(v.state, "best_metric_epoch", -1) > 0:
                best = f" (best {v.state.best_metric:.4f}, epoch {v.state.best_metric_epoch})"
        parts = [f"{metric_label(k)} {float(x):.4f}" for k, x in values.items() if isinstance(x, (int, float, torch.Tensor))]
        line = f"epoch {engine.state.epoch}/{engine.state.max_epochs}: " + ", ".join(parts) + best
        if self._lr is not None:
            line += f", lr {self._lr:.1e}"
        logger.info(f"{line}, {time.perf_counter() - self._start:.0f} s")


def quiet_other_ranks() -> None:
    """Distributed runs: ranks > 0 log warnings and errors only (rank 0 prints the epoch lines)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() > 0:
        logging.getLogger().setLevel(logging.WARNING)


class ProgressBar(_IgniteProgressBar):
    """tqdm progress bar for MONAI workflows, which attach handlers with ``attach(engine)`` only; drawn
    only on a terminal (in a log file every redraw would be a line).

    Args:
        output_transform: engine output -> value shown (e.g. the loss).
        kwargs: ``ignite.handlers.ProgressBar`` arguments (``persist``, ``desc``...).
    """

    def __init__(self, output_transform: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._output_transform = output_transform

    def attach(self, engine: Any, metric_names: Any = None, output_transform: Any = None, **kwargs: Any) -> None:
        if not is_terminal():
            return
        super().attach(engine, metric_names, output_transform or self._output_transform, **kwargs)


class _AtomicSave(BaseSaveHandler):
    """Wraps MONAI's disk saver: write to a temporary file then ``os.replace``; fixed names are never deleted
    first (ignite removes the previous file before saving the next, which a kill could leave empty-handed)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.inner._atomic = True

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        self.inner(checkpoint, filename, metadata)

    def remove(self, filename: str) -> None:
        if getattr(self.inner, "filename", None) is None:
            self.inner.remove(filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """:class:`monai.handlers.CheckpointSaver` whose writes are atomic.

    Args:
        engine_key: also save the engine it is attached to under this key (e.g. ``"trainer"`` for epoch
            and iteration counters; a config cannot reference the trainer from its own handlers).
        args, kwargs: ``CheckpointSaver`` arguments.
    """

    def __init__(self, *args: Any, engine_key: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.engine_key = engine_key
        for ckpt in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if ckpt is not None:
                ckpt.save_handler = _AtomicSave(ckpt.save_handler)

    def attach(self, engine: Any) -> None:
        if self.engine_key:
            self.save_dict[self.engine_key] = engine  # the ignite Checkpoints share this dict
        super().attach(engine)


class CheckedCheckpointLoader(CheckpointLoader):
    """:class:`monai.handlers.CheckpointLoader` for trained weights (``models/model.pt``) that first checks
    the file exists and fits the configured network, and otherwise stops with one clear error."""

    def __init__(self, load_path: str, load_dict: dict, option: str = "ckpt_dir", **kwargs: Any) -> None:
        self.option = option
        super().__init__(load_path=load_path, load_dict=load_dict, **kwargs)

    def check(self, engine: Any) -> None:
        """Raise one clear error unless the file is a readable checkpoint that fits the network."""
        state = read_checkpoint(self.load_path, self.option)
        model = self.load_dict.get("model")
        if isinstance(model, torch.nn.Module):
            check_state_dict(
                getattr(model, "module", model).state_dict(),
                state,
                self.load_path,
                "It was trained with other network options (e.g. cprfl, fusion, blocks, unet_features, location_prompt, or another backbone layer): "
                "pass the same options, or point to the right checkpoint.",
            )

    def __call__(self, engine: Any) -> None:
        self.check(engine)
        super().__call__(engine)


class ResumeCheckpointLoader(CheckedCheckpointLoader):
    """:class:`CheckedCheckpointLoader` for ``--resume``: also restores the engine it is attached to, and stops
    with one clear line when the checkpoint is already past ``--epochs``.

    Args:
        engine_key: key of the engine's state in the checkpoint (see ``AtomicCheckpointSaver``).
        args, kwargs: ``CheckedCheckpointLoader`` arguments.
    """

    def __init__(self, *args: Any, engine_key: str = "trainer", option: str = "resume", **kwargs: Any) -> None:
        super().__init__(*args, option=option, **kwargs)
        self.engine_key = engine_key

    def attach(self, engine: Any) -> None:
        self.load_dict[self.engine_key] = engine
        super().attach(engine)

    def check(self, engine: Any) -> None:
        super().check(engine)
        saved = torch.load(self.load_path, map_location="cpu", weights_only=True).get(self.engine_key, {})
        epoch = saved.get("epoch", saved.get("iteration", 0) // max(saved.get("epoch_length", 1), 1))
        if engine.state.max_epochs is not None and epoch > engine.state.max_epochs:
            raise BundleInputError(
                f"--resume: checkpoint '{self.load_path}' was saved after epoch {epoch}, beyond --epochs "
                f"{engine.state.max_epochs}: pass --epochs larger than {epoch} to train further"
            )

    def __call__(self, engine: Any) -> None:
        super().__call__(engine)
        logger.info(f"resumed from {self.load_path} after epoch {engine.state.epoch} of {engine.state.max_epochs}")


class BestMetricState:
    """Checkpointable view of the validation's best metric and of the best-model saver's record.

    Put it in the resume checkpoint's ``save_dict`` and in the ``CheckpointLoader``'s ``load_dict``: a
    resumed run then keeps comparing against the best metric reached before the interruption.
    """

    def __init__(self, evaluator: Any, saver: CheckpointSaver | None = None) -> None:
        self.evaluator = evaluator
        self.saver = saver

    def state_dict(self) -> dict[str, Any]:
        state = {
            "best_metric": float(getattr(self.evaluator.state, "best_metric", -1.0)),
            "best_metric_epoch": int(getattr(self.evaluator.state, "best_metric_epoch", -1)),
        }
        tracker = getattr(self.saver, "_key_metric_checkpoint", None)
        if tracker is not None:
            state["saver"] = tracker.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.evaluator.state.best_metric = state.get("best_metric", -1.0)
        self.evaluator.state.best_metric_epoch = state.get("best_metric_epoch", -1)
        if self.saver is not None and "saver" in state:
            self.saver.load_state_dict(state["saver"])
        logger.info("resumed best metric %.4f (epoch %s)", state.get("best_metric", -1.0), state.get("best_metric_epoch"))


def latest_checkpoint(ckpt_dir: str, resume: bool = True, pattern: str = "checkpoint_epoch=*.pt") -> str | None:
    """Path of the highest-epoch resume checkpoint in ``ckpt_dir`` (None when ``resume`` is False).

    With ``resume`` and no checkpoint there, raise a clear error rather than silently start afresh.
    """
    if not resume:
        return None
    files = glob.glob(os.path.join(ckpt_dir, pattern))
    if not files:
        raise BundleInputError(
            f"--resume: no checkpoint matching '{pattern}' in '{ckpt_dir}'; run without --resume to start training"
        )
    return max(files, key=lambda f: int(re.findall(r"(\d+)", os.path.basename(f))[-1]))


def rank_handlers(handlers: Any) -> list:
    """Handlers for this distributed rank: rank 0 keeps all; other ranks drop those that log or write files
    (they still run the LR schedule, validation and resume loading, which every rank must do)."""
    import torch.distributed as dist

    from monai.handlers import StatsHandler, TensorBoardStatsHandler

    handlers = list(handlers or [])
    if not dist.is_available() or not dist.is_initialized() or dist.get_rank() == 0:
        return handlers
    # MetricsSaver stays: it gathers every rank's per-image rows (a collective) and writes on rank 0 only
    writers = (StatsHandler, TensorBoardStatsHandler, CheckpointSaver, _IgniteProgressBar, EpochSummary)
    return [h for h in handlers if not isinstance(h, writers)]


def log_parameters(network: Any) -> Any:
    """Log the network's trainable parameter count (per component for LCPDN); return the network."""
    module = getattr(network, "module", network)  # DDP
    if hasattr(module, "parameter_report"):
        report = module.parameter_report()
        parts = " (" + ", ".join(f"{k} {v / 1e6:.3f}M" for k, v in report.items() if k != "total") + ")"
        total = report["total"]
    else:
        parts, total = "", sum(p.numel() for p in module.parameters() if p.requires_grad)
    message = f"trainable parameters: {total / 1e6:.3f}M{parts}"
    logger.info(message)
    return network


def print_training_summary(evaluator: Any, ckpt_dir: str) -> None:
    """One closing line: the best validation Dice, its epoch, the last epoch's metrics and where the model is."""
    state = evaluator.state
    last = ", ".join(f"{k} {v:.4f}" for k, v in (state.metrics or {}).items())
    logger.info(
        f"training done: best validation mean Dice {getattr(state, 'best_metric', float('nan')):.4f} at epoch "
        f"{getattr(state, 'best_metric_epoch', '?')} (last validation: {last or 'none'}); best model: "
        f"{os.path.join(ckpt_dir, 'model.pt')}"
    )


def print_evaluation(evaluator: Any, output_dir: str, split: str, items: Any = None) -> dict[str, Any]:
    """Print and save (``<output_dir>/evaluation_<split>.json``) the labelled evaluation summary.

    Per-image Dice / IoU (each image scored on its own, then averaged: the LCPDN / TextDiff / LViT
    protocol) and dataset-global Dice / IoU (all pixels pooled into one score, as some papers report)
    are reported separately. Images whose ground truth is empty have no per-image score (NaN, skipped
    in the means). ``items`` (the evaluated datalist, in loader order) names the per-image rows.
    """
    state = evaluator.state
    details = getattr(state, "metric_details", {}) or {}
    columns = {k: torch.as_tensor(details[f"per_image_{k}"]).flatten().tolist() for k in ("dice", "iou") if f"per_image_{k}" in details}
    n = max((len(v) for v in columns.values()), default=0)
    names = [str(item.get("image", i)) if isinstance(item, dict) else str(i) for i, item in enumerate(items or [])]
    per_image = [{"image": names[i] if i < len(names) else i, **{k: v[i] for k, v in columns.items()}} for i in range(n)]
    metrics = {k: float(v) for k, v in state.metrics.items()}
    summary = {
        "split": split,
        "images": n,
        "per_image_mean_dice": metrics.get("per_image_dice"),
        "per_image_mean_iou": metrics.get("per_image_iou"),
        "global_dice": metrics.get("global_dice"),
        "global_iou": metrics.get("global_iou"),
        "per_image": per_image,
    }
    path = os.path.join(output_dir, f"evaluation_{split}.json")
    with atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    lines = [f"evaluation on '{split}': {n} images"]
    for key in ("per_image_mean_dice", "per_image_mean_iou", "global_dice", "global_iou"):
        if summary[key] is not None:
            lines.append(f"  {key:<20} {100 * summary[key]:6.2f} %")
    lines.append(f"  written: {path} and per-image CSV files in {output_dir}")
    logger.info("\n".join(lines))
    return summary
