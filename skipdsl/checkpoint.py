"""Checkpoints: a trained network, the exact spec it trained and what inference needs.

This docstring is the one description of the format (version 1).

A trial folder of ``bench run`` (``OUT/trials/<key>/``) holds two files next to
``result.json``; a search keeps the same ``.pt`` as ``OUT/checkpoints/<key>.pt`` and copies
those of its Pareto front to ``OUT/pareto/<name>.pt``::

    model.pt   torch.save of one dict; torch.load(path, weights_only=True) reads it (only
               tensors, strings, numbers, lists and dicts: no code is unpickled)
      format         "skipdsl.checkpoint"
      version        1
      spec           the spec as trained, YAML text (Spec.to_yaml()): the scaled widths and
                     projection channels, dims, in_channels, num_classes, every head,
                     deep_supervision and cgm as the trial compiled them
      spec_hash      skipdsl.spec_hash(spec), checked on load
      state_dict     {name: tensor} of the module skipdsl.compile(spec) builds: every head and
                     CGM it trained with (so pruning works), at the selected epoch (the best
                     validation IoU, the weights the trial's test IoU was measured with)
      normalisation  {"mean": [C floats], "std": [C floats]: the training split's per-channel
                     statistics, the network sees (image - mean) / std;
                      "input": how the dataset prepared raw images before that, e.g.
                     "z-score per image and channel" or "CT window (-200.0, 250.0) HU -> [0, 1]"
                     (None when not known); ``skipdsl predict --intensity auto`` applies it}
      threshold      masks are sigmoid(logits) > threshold
      image_size     [H, W] or [D, H, W]: the whole-image size the trial evaluated; larger inputs
                     are predicted with sliding windows of this size
      patch          the training crop side (0: whole images)
      classes        the names of the K mask channels
      trial          where it came from: trial_key, model, dataset, seed, budget,
                     deep_supervision, epochs, best_epoch, val_iou, test_iou, skipdsl, torch
    spec.yaml  the same spec as a file with a comment header, for ``skipdsl compile``,
               ``bench run --models`` and reading. :func:`load_checkpoint` refuses a spec.yaml
               that differs from the copy inside model.pt.

Both files are written to a temporary name and moved into place (``os.replace``), so a killed
run leaves either a whole checkpoint or none. :func:`load_checkpoint` turns every problem (a
missing, truncated or foreign file, weights of another spec) into a ``DataError`` or
``SpecError`` naming the file and saying what to do.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import SpecError
from .fileio import atomic_write_bytes, atomic_write_text
from .spec import Spec

__all__ = ["FORMAT", "VERSION", "MODEL_FILE", "SPEC_FILE", "Checkpoint", "Inference",
           "payload", "to_bytes", "write", "write_file", "load_checkpoint", "build_network"]

FORMAT = "skipdsl.checkpoint"
VERSION = 1
MODEL_FILE = "model.pt"
SPEC_FILE = "spec.yaml"
RETRAIN = ("re-run the trial to write it again (delete its folder, then the same bench run), "
           "or copy the file again if it was copied")


def _data_error(path: Any, problem: str, todo: str):
    from .data.base import data_error

    return data_error(path, problem, todo)


# -- writing --------------------------------------------------------------------------------


def payload(model: nn.Module, *, state_dict: dict[str, torch.Tensor] | None = None,
            mean: Any = None, std: Any = None, input_normalisation: str | None = None,
            threshold: float = 0.5, image_size: Any = (), patch: int = 0,
            classes: Any = (), trial: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict of a compiled ``model`` (format above).

    ``state_dict``: the weights to keep (default: the model's own); ``mean``/``std``: the
    per-channel training statistics (any shape with C values; default 0 and 1).
    """
    from skipdsl.graph import spec_hash
    from skipdsl.version import __version__

    spec = model.spec
    sd = model.state_dict() if state_dict is None else state_dict
    c = spec.in_channels

    def _values(v: Any, default: float) -> list[float]:
        if v is None:
            return [default] * c
        out = torch.as_tensor(v, dtype=torch.float64).flatten().tolist()
        if len(out) != c:
            raise ValueError(f"{len(out)} normalisation values for {c} input channels")
        return out

    return {
        "format": FORMAT, "version": VERSION,
        "spec": spec.to_yaml(), "spec_hash": spec_hash(spec),
        "state_dict": {k: v.detach().to("cpu").contiguous() for k, v in sd.items()},
        "normalisation": {"mean": _values(mean, 0.0), "std": _values(std, 1.0),
                          "input": input_normalisation},
        "threshold": float(threshold),
        "image_size": [int(s) for s in image_size],
        "patch": int(patch or 0),
        "classes": [str(k) for k in classes] or [f"class{k}" for k in range(spec.num_classes)],
        "trial": {"skipdsl": __version__, "torch": str(torch.__version__),
                  **{str(k): _loadable(v) for k, v in (trial or {}).items()
                     if _loadable(v) is not _SKIP}},
    }


_SKIP = object()


def _loadable(v: Any) -> Any:
    """``v`` as types ``torch.load(weights_only=True)`` reads back (numpy scalars and str
    subclasses become plain Python values); ``_SKIP`` for anything else."""
    if isinstance(v, (list, tuple)):
        items = [_loadable(x) for x in v]
        return _SKIP if any(x is _SKIP for x in items) else items
    if v is None or isinstance(v, bool):
        return v
    for kind in (str, int, float):
        if isinstance(v, kind):
            return kind(v)
    if hasattr(v, "item") and getattr(v, "ndim", None) == 0:  # a numpy scalar
        return _loadable(v.item())
    return _SKIP


def to_bytes(ckpt: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return buf.getvalue()


def _spec_header(ckpt: dict[str, Any], name: str) -> str:
    t = ckpt.get("trial") or {}
    origin = ", ".join(f"{k} {t[k]}" for k in ("model", "dataset", "seed", "deep_supervision",
                                               "budget", "trial_key") if t.get(k) is not None)
    return (f"# the spec {name} was trained as ({origin or 'skipdsl checkpoint'});\n"
            f"# the weights: skipdsl.load_checkpoint('{name}'), skipdsl predict, skipdsl export\n")


def write_file(path: str | Path, ckpt: dict[str, Any] | bytes) -> Path:
    """Write one checkpoint file atomically (bytes from :func:`to_bytes`, or the dict)."""
    return atomic_write_bytes(path, ckpt if isinstance(ckpt, bytes) else to_bytes(ckpt))


def write(folder: str | Path, ckpt: dict[str, Any]) -> Path:
    """``folder/model.pt`` and ``folder/spec.yaml``, each written atomically; returns the .pt."""
    folder = Path(folder)
    pt = write_file(folder / MODEL_FILE, ckpt)
    atomic_write_text(folder / SPEC_FILE, _spec_header(ckpt, MODEL_FILE) + ckpt["spec"])
    return pt


# -- the inference network ------------------------------------------------------------------


class Inference(nn.Module):
    """A network that returns one tensor: the main head's logits (or the pruned head's).

    With ``mean``/``std`` it normalises its input first, ``(x - mean) / std`` per channel, so it
    takes images as the dataset prepared them (what :func:`skipdsl predict` and the exported
    files take). ``spec`` is the network's spec.
    """

    def __init__(self, net: nn.Module, mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None) -> None:
        super().__init__()
        self.net = net
        self.spec = net.spec
        self.normalises = mean is not None
        if mean is not None:
            shape = (1, -1) + (1,) * net.spec.dims
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(shape))
            self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalises:
            x = (x - self.mean) / self.std
        out = self.net(x)
        if isinstance(out, dict):
            return out[self.net.main_head]
        return out


def _load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: Any, *,
                  strict: bool) -> None:
    """Load ``state_dict`` into ``model``; a missing, surplus or misshapen tensor raises a
    SpecError naming ``source`` (surplus tensors are allowed unless ``strict``)."""
    own = model.state_dict()
    shapes = [f"{k}: {tuple(v.shape)} in the checkpoint, {tuple(own[k].shape)} in the spec"
              for k, v in state_dict.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state_dict]
    surplus = [k for k in state_dict if k not in own] if strict else []
    if shapes or missing or surplus:
        what = "; ".join(x for x in (
            f"{len(shapes)} shape(s) differ ({'; '.join(shapes[:3])})" if shapes else "",
            f"missing {len(missing)} tensor(s) ({', '.join(missing[:4])})" if missing else "",
            f"{len(surplus)} tensor(s) the spec has no place for ({', '.join(surplus[:4])})"
            if surplus else "") if x)
        raise SpecError(f"the weights do not fit the spec: {what}", file=str(source),
                        hint="the checkpoint was trained for another spec: use the spec.yaml "
                        "written next to it (or none), or retrain with this spec")
    model.load_state_dict(state_dict, strict=strict)


def build_network(spec: Spec, state_dict: dict[str, torch.Tensor] | None = None, *,
                  prune: int | None = None, cgm: bool | None = None, mean: Any = None,
                  std: Any = None, source: Any = None) -> Inference:
    """The inference network of ``spec`` in eval mode: the main head's logits, or with
    ``prune=L`` those of head ``x_0_L``'s sub-network (shared weights); ``cgm`` overrides the
    spec's (``None`` keeps it); with ``state_dict``, its trained weights (from ``source``)."""
    from skipdsl.models import create_model
    from skipdsl import compiler

    use_cgm = spec.cgm if cgm is None else bool(cgm)
    level = int(prune) if prune else None
    if level is not None and f"x_0_{level}" == spec.main_head.node:
        level = None  # the main head's own sub-network: the whole network
    if state_dict is not None:
        if use_cgm and not any(k.startswith("cgm.") for k in state_dict):
            raise SpecError("the checkpoint holds no CGM weights (it was trained with cgm off)",
                            file=str(source), hint="predict or export without --cgm")
        if level is not None and not any(k.startswith(f"heads.x_0_{level}.") for k in state_dict):
            raise SpecError(f"the checkpoint has no trained head on x_0_{level}, so it cannot be "
                            f"pruned to level {level}", file=str(source), node=f"x_0_{level}",
                            hint="pruning needs the deep-supervision heads: train with deep "
                            "supervision (bench run --ds on), or use the whole network "
                            "(no --prune)")
    # a trained backbone's weights are in the checkpoint: its pretrained file is not needed
    model = create_model(spec, deep_supervision=level is not None, cgm=use_cgm,
                         weights="none" if spec.encoder.backbone and state_dict is not None
                         else None)
    if state_dict is not None:
        _load_weights(model, state_dict, source, strict=False)
    model.eval()
    if level is not None:
        model = compiler.prune(model, level).eval()
    return Inference(model, mean, std).eval()


# -- loading --------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``model`` is the module as trained (eval mode, weights loaded and
    checked against ``spec``); :meth:`network` builds what inference and export use."""

    path: Path
    spec: Spec
    model: nn.Module
    state_dict: dict[str, torch.Tensor]
    mean: list[float]
    std: list[float]
    input_normalisation: str | None = None
    threshold: float = 0.5
    image_size: tuple[int, ...] = ()
    patch: int = 0
    classes: list[str] = field(default_factory=list)
    trial: dict[str, Any] = field(default_factory=dict)

    @property
    def dims(self) -> int:
        return self.spec.dims

    @property
    def in_channels(self) -> int:
        return self.spec.in_channels

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def multiple(self) -> int:
        """Every spatial side of the network's input must be a multiple of this."""
        return self.spec.input_multiple

    def network(self, prune: int | None = None, cgm: bool | None = None, *,
                normalise: bool = True) -> Inference:
        """The inference network (see :func:`build_network`) with the trained weights; with
        ``normalise`` (default) it applies the training statistics to its input itself."""
        return build_network(self.spec, self.state_dict, prune=prune, cgm=cgm,
                             mean=self.mean if normalise else None,
                             std=self.std if normalise else None, source=self.path)


def _checkpoint_file(path: Path) -> Path:
    if path.is_dir():
        pt = path / MODEL_FILE
        if not pt.is_file():
            raise _data_error(pt, "no checkpoint in this folder",
                              "a trial writes model.pt when it finishes (unless run with "
                              "--no-weights); give the trial folder or a .pt file")
        return pt
    if not path.is_file():
        raise _data_error(path, "checkpoint file is missing",
                          "give a trial folder (OUT/trials/<key>), its model.pt, or a "
                          "search's pareto/<name>.pt")
    return path


def _read(pt: Path) -> dict[str, Any]:
    try:
        data = torch.load(pt, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, random bytes, a pickle with code in it, ...
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise _data_error(pt, f"not a readable checkpoint: truncated or corrupt "
                          f"({type(err).__name__}: {first})", RETRAIN) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        kind = "a plain state dict" if isinstance(data, dict) and data and all(
            isinstance(v, torch.Tensor) for v in data.values()) else type(data).__name__
        raise _data_error(pt, f"not a skipdsl checkpoint (found {kind})",
                          "write one with skipdsl.checkpoint.write(folder, "
                          "skipdsl.checkpoint.payload(model)); a bare state dict loads with "
                          "skipdsl.compile(spec).load_state_dict(torch.load(file))")
    if int(data.get("version", 0)) > VERSION:
        raise _data_error(pt, f"checkpoint format version {data.get('version')} is newer than "
                          f"this skipdsl reads ({VERSION})", "upgrade skipdsl")
    missing = [k for k in ("spec", "state_dict", "normalisation") if k not in data]
    if missing:
        raise _data_error(pt, f"checkpoint lacks {', '.join(missing)}", RETRAIN)
    return data


def _aligned(spec: Spec, like: Spec) -> Spec:
    """``spec`` with the settings a trial fills in (channels, dims, heads on) taken from
    ``like``, so that only the network's design is compared."""
    return spec.replace(in_channels=like.in_channels, num_classes=like.num_classes,
                        dims=like.dims, deep_supervision=like.deep_supervision, cgm=like.cgm)


def _check_spec(pt: Path, trained: Spec, other: "Spec | str | Path", what: str) -> None:
    from skipdsl.graph import spec_hash
    from skipdsl.spec import load

    other_spec = _aligned(load(other), trained)
    if spec_hash(other_spec) != spec_hash(trained):
        raise SpecError(f"the checkpoint was trained for spec '{trained.name}' (hash "
                        f"{spec_hash(trained)}), not for {what}: '{other_spec.name}' "
                        f"(hash {spec_hash(other_spec)})", file=str(pt), hint="use the spec the checkpoint holds (its spec.yaml, "
                        "or leave the spec out), or retrain with this one")


def load_checkpoint(path: str | Path, *, spec: "Spec | str | Path | None" = None) -> Checkpoint:
    """Read a checkpoint (a trial folder, its ``model.pt`` or any ``.pt`` written by
    :func:`write_file`), rebuild the module from the spec inside and load its weights.

    The spec is validated again (schema, graph, compile), its hash compared with the stored one,
    and the weights must fit it exactly. A ``spec.yaml`` next to ``model.pt``, and ``spec`` when
    given, must describe the same network (same canonical hash once the channels and dims the
    trial filled in are aligned). Raises ``DataError`` (missing, truncated or foreign file) or
    ``SpecError`` (another spec), naming the file.
    """
    from skipdsl.models import create_model
    from skipdsl.graph import spec_hash
    from .spec import loads

    pt = _checkpoint_file(Path(path))
    data = _read(pt)
    try:
        trained = loads(str(data["spec"]), source=f"{pt} (its spec)")
        model = create_model(trained, weights="none" if trained.encoder.backbone else None)
    except SpecError as err:
        raise SpecError(f"the spec inside the checkpoint is not valid: {err.message}",
                        file=str(pt), node=err.node, edge=err.edge,
                        hint="it was written by another skipdsl version, or edited: " + RETRAIN
                        ) from None
    stored = data.get("spec_hash")
    if stored and stored != spec_hash(trained):
        raise SpecError(f"the spec inside the checkpoint hashes to {spec_hash(trained)}, "
                        f"not to the {stored} it was saved with", file=str(pt),
                        hint="the file was edited or written by another skipdsl version: "
                        + RETRAIN)
    side = pt.parent / SPEC_FILE
    if pt.name == MODEL_FILE and side.is_file():
        _check_spec(pt, trained, side, str(side))
    if spec is not None:
        _check_spec(pt, trained, spec, f"the spec given ({getattr(spec, 'source', None) or spec})")
    sd = data["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise _data_error(pt, "the checkpoint's state_dict is not a dict of tensors", RETRAIN)
    _load_weights(model, sd, pt, strict=True)
    norm = data["normalisation"] or {}
    c = trained.in_channels
    mean, std = list(norm.get("mean") or [0.0] * c), list(norm.get("std") or [1.0] * c)
    if len(mean) != c or len(std) != c:
        raise _data_error(pt, f"normalisation holds {len(mean)} means and {len(std)} stds for "
                          f"{c} input channels", RETRAIN)
    return Checkpoint(path=pt, spec=trained, model=model.eval(), state_dict=sd, mean=mean,
                      std=std, input_normalisation=norm.get("input"),
                      threshold=float(data.get("threshold", 0.5)),
                      image_size=tuple(int(s) for s in data.get("image_size") or ()),
                      patch=int(data.get("patch") or 0),
                      classes=list(data.get("classes") or []), trial=dict(data.get("trial") or {}))
