"""``skipdsl predict``: apply a checkpoint to image files and write their masks.

Per file: read it (:mod:`skipdsl.imageio`: PNG/TIFF, ``.npy``, NIfTI) -> the dataset's
intensity step (``intensity``; ``auto`` = the one the checkpoint records, e.g. a z-score per
image and channel) -> the network, which normalises with the training statistics itself, on
the image padded (edge values, centred) to a multiple of ``2^(depth-1)`` -> sliding windows
of the training size (MONAI ``sliding_window_inference``, Gaussian blending) when the image is
larger -> crop back -> ``sigmoid(logits) > threshold`` per class, or an argmax label map ->
the mask, written atomically under the input's name and in its format.

The trainer evaluates whole test images with the same network, so on the dataset's own arrays
(``.npy``, ``intensity="none"``) ``predict`` reproduces the trial's test masks.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import Checkpoint, load_checkpoint
from .errors import SpecError
from .imageio import Image, find_inputs, kind_of, read_image, write_mask

__all__ = ["INTENSITY", "intensity_step", "pad_to_multiple", "predict_logits", "to_mask",
           "predict_image", "output_paths", "predict_files"]

#: ``intensity`` choices (``window:LO,HI`` too)
INTENSITY = ("auto", "zscore", "zscore-nonzero", "none")

#: The datasets' recorded normalisations (``meta["normalisation"]``) that ``auto`` applies.
_RECORDED = [(re.compile(r"^z-score per image and channel"), "zscore"),
             (re.compile(r"^z-score per channel over brain voxels"), "zscore-nonzero"),
             (re.compile(r"^CT window \(?(-?[\d.]+), *(-?[\d.]+)\)? HU"), "window:{0},{1}")]


def intensity_step(choice: str, recorded: str | None = None
                   ) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """``(name, fn)``: the step that turns a read image ``(C, *spatial)`` into what the dataset
    fed the trainer. ``auto`` picks it from ``recorded`` (the checkpoint's
    ``normalisation["input"]``) and falls back to ``none`` for a recording it does not know."""
    from .data.arrays import zscore

    name = choice
    if choice == "auto":
        name = "none"
        for pattern, rule in _RECORDED:
            m = pattern.match(recorded or "")
            if m:
                name = rule.format(*m.groups())
                break
    if name == "zscore":
        return name, zscore
    if name == "zscore-nonzero":
        return name, lambda x: zscore(x, where=(x != 0).any(0, keepdims=True))
    if name == "none":
        return name, lambda x: x
    m = re.fullmatch(r"window:(-?[\d.]+),(-?[\d.]+)", name)
    if m and float(m.group(2)) > float(m.group(1)):
        lo, hi = float(m.group(1)), float(m.group(2))
        return name, lambda x: np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    raise SpecError(f"unknown intensity step '{choice}'",
                    hint=f"valid: {', '.join(INTENSITY)}, window:LO,HI (e.g. window:-200,250)")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """``x`` (B, C, *spatial) padded with its edge values (centred) so that every spatial side
    is a multiple of ``multiple``, and the slices that crop the result back."""
    spatial = x.shape[2:]
    extra = [(-s) % multiple for s in spatial]
    if not any(extra):
        return x, tuple(slice(None) for _ in spatial)
    pad: list[int] = []
    for e in reversed(extra):  # F.pad wants the last axis first
        pad += [e // 2, e - e // 2]
    mode = "replicate" if x.dim() in (4, 5) else "constant"
    crop = tuple(slice(e // 2, e // 2 + s) for e, s in zip(extra, spatial))
    return F.pad(x, pad, mode=mode), crop


@torch.no_grad()
def predict_logits(net: torch.nn.Module, x: torch.Tensor, *, multiple: int,
                   window: Sequence[int] | None = None, overlap: float = 0.25,
                   batch: int = 4) -> torch.Tensor:
    """Logits (B, K, *spatial) of ``net`` for ``x`` (B, C, *spatial) of any size: padded to
    ``multiple`` and cropped back; sliding windows of ``window`` (rounded up to ``multiple``)
    when the padded image is larger than it."""
    from monai.inferers import sliding_window_inference

    xp, crop = pad_to_multiple(x, multiple)
    size = tuple(xp.shape[2:])
    if window:
        roi = tuple(min(-(-int(w) // multiple) * multiple, s) for w, s in zip(window, size))
    else:
        roi = size
    if roi == size:
        out = net(xp)
    else:
        out = sliding_window_inference(xp, roi, batch, net, overlap=overlap, mode="gaussian")
    return out[(slice(None), slice(None)) + crop]


def to_mask(logits: torch.Tensor, threshold: float, argmax: bool = False) -> np.ndarray:
    """One image's logits (K, *spatial) -> booleans (K, *spatial) (``sigmoid > threshold``),
    or with ``argmax`` a label map (*spatial): 1 + the most probable class where its
    probability exceeds ``threshold``, 0 elsewhere."""
    probs = torch.sigmoid(logits.float())
    if not argmax:
        return (probs > threshold).cpu().numpy()
    best, idx = probs.max(0)
    return torch.where(best > threshold, idx + 1, 0).to(torch.uint8).cpu().numpy()


def predict_image(ckpt: Checkpoint, net: torch.nn.Module, image: Image, *, threshold: float,
                  argmax: bool, step: Callable[[np.ndarray], np.ndarray],
                  window: Sequence[int] | None, overlap: float,
                  device: torch.device) -> np.ndarray:
    """The mask of one read image (see :func:`to_mask`)."""
    x = torch.from_numpy(np.ascontiguousarray(step(image.array), dtype=np.float32))[None]
    logits = predict_logits(net, x.to(device), multiple=ckpt.multiple, window=window,
                            overlap=overlap)
    return to_mask(logits[0], threshold, argmax)


def output_paths(files: list[Path], out: str | Path) -> list[Path]:
    """Where each input's mask goes: ``OUT/<input name>``, or ``OUT`` itself for one input
    when ``OUT`` names a file of the input's type. Refuses to overwrite an input and two
    inputs of the same name (a ``DataError``)."""
    from .data.base import data_error

    out = Path(out)
    if len(files) == 1 and kind_of(out) and not out.is_dir():
        if kind_of(out) != kind_of(files[0]):
            raise data_error(out, f"a {kind_of(files[0])} input gets a {kind_of(files[0])} "
                             f"mask, not {kind_of(out)}",
                             f"name the output like the input (…{files[0].name[-8:]}), or "
                             "give a folder")
        paths = [out]
    else:
        paths = [out / f.name for f in files]
        seen: dict[Path, Path] = {}
        for f, p in zip(files, paths):
            if p in seen:
                raise data_error(f, f"two inputs are named {f.name} (also {seen[p]}): their "
                                 "masks would overwrite each other",
                                 "predict the folders one at a time, each with its own -o")
            seen[p] = f
    for f, p in zip(files, paths):
        if p.resolve() == f.resolve():
            raise data_error(f, "the mask would overwrite its image",
                             "give an output folder other than the inputs' folder")
    return paths


def predict_files(checkpoint: "Checkpoint | str | Path", inputs: Sequence[str | Path],
                  out: str | Path, *, prune: int | None = None, cgm: bool | None = None,
                  threshold: float | None = None, argmax: bool = False,
                  intensity: str = "auto", window: Sequence[int] | int | None = None,
                  overlap: float = 0.25, device: str = "cpu", progress: bool = True,
                  console: Any = None) -> list[Path]:
    """Predict every input (files, or folders of them) and write the masks; returns their paths.

    ``prune``/``cgm``: the sub-network of head ``x_0_L`` / CGM gating on or off (default: as
    trained); ``threshold``: default the checkpoint's; ``argmax``: a label map instead of one
    mask per class; ``window``: the sliding-window side (default: the training image size);
    ``intensity``: see :func:`intensity_step`. Every input is checked before the first is
    predicted (names, types); a file that turns out unreadable stops the run with a
    ``DataError`` naming it, after the masks already written (each one whole).
    """
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    if argmax and ckpt.num_classes < 2:
        raise SpecError(f"--argmax needs 2 or more classes; the network has "
                        f"{ckpt.num_classes}", file=str(ckpt.path),
                        hint="leave --argmax out: one class is thresholded")
    files = find_inputs(list(inputs))
    targets = output_paths(files, out)
    name, step = intensity_step(intensity, ckpt.input_normalisation)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    net = ckpt.network(prune=prune, cgm=cgm).to(dev)
    t = ckpt.threshold if threshold is None else float(threshold)
    win = ([int(window)] * ckpt.dims if isinstance(window, int) else window) or ckpt.image_size
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    console = console or Console(stderr=True)
    if intensity == "auto" and name == "none" and ckpt.input_normalisation:
        console.print(f"note: the checkpoint records the dataset's intensity step as "
                      f"'{ckpt.input_normalisation}', which predict does not know: images are "
                      "used as read (set --intensity)", highlight=False)
    written: list[Path] = []
    bar = Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[file]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                   console=console, disable=not progress, transient=False)
    with bar:
        task = bar.add_task("predict", total=len(files), file="")
        for f, target in zip(files, targets):
            bar.update(task, file=f.name)
            image = read_image(f, dims=ckpt.dims, channels=ckpt.in_channels)
            mask = predict_image(ckpt, net, image, threshold=t, argmax=argmax, step=step,
                                 window=win, overlap=overlap, device=dev)
            written.append(write_mask(target, mask, image, labels=argmax))
            bar.advance(task)
    return written
