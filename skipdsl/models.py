"""Every model by name, from one registry (timm's ``create_model`` / ``list_models``).

    >>> import skipdsl
    >>> skipdsl.list_models()                              # every name create_model builds
    >>> skipdsl.list_models("unet*", task="semantic", dims=3)
    >>> net = skipdsl.create_model("unetsharp", widths=[4, 8, 16, 32, 64], dims=3)
    >>> net = skipdsl.create_model("attention_unet", image_size=64, width_scale=0.25)
    >>> det = skipdsl.create_model("maskrcnn_sharp", num_classes=2)
    >>> net = skipdsl.create_model("my_spec.yaml")         # a spec file, a Spec or a spec dict

What is registered (:data:`skipdsl.registry.MODELS`):

- ``source='zoo'``: the DSL specs shipped in ``skipdsl/zoo`` (the UNet family, 2D and 3D;
  the V-Net family, 3D; the feature pyramids ``fpn*``, ``task='instance'``), built by
  :func:`skipdsl.compile` (options: its keywords: ``in_channels``, ``num_classes``, ``dims``,
  ``widths``, ``deep_supervision``, ``cgm``, ``checkpoint``, ``backbone``, ``weights``; and
  ``width_scale``, which scales the spec's level widths and projections as a budget does;
  :func:`build_spec`).
- ``source='baseline'``: maintained libraries' networks (:mod:`skipdsl.baselines`; options:
  ``in_channels``, ``num_classes``, ``dims``, ``image_size``, ``patch``, ``spacing``,
  ``width_scale`` or ``widths``).

Every semantic model takes the options a trial builds with (``in_channels``, ``num_classes``,
``dims``, ``width_scale``, ``widths``, ``deep_supervision``, ``cgm``, ``image_size``,
``patch``, ``spacing``): a DSL spec ignores the sizes, a baseline (one head, no CGM) ignores
``deep_supervision`` and ``cgm``, so the trainer builds every model with one call.
- ``source='detector'``: Mask R-CNN over a zoo pyramid (``maskrcnn_fpn``, ``maskrcnn_pp``,
  ``maskrcnn_3p``, ``maskrcnn_sharp``; :func:`skipdsl.detection.maskrcnn`'s options and
  ``width_scale`` for the pyramid).

Adding a model is one decorated builder: ``@register_model("name", task=..., dims=...,
source=...)`` over ``def name(**options) -> nn.Module``. Options given as ``None`` are
dropped (the builder's default holds), so callers can pass what they have.
"""
from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from . import baselines, detection  # noqa: F401  (their builders register themselves)
from .compiler import compile
from .errors import SpecError, did_you_mean
from .registry import MODELS, ModelInfo, register_model
from .spec import Spec, from_dict, load, scale_spec, zoo_dir

__all__ = ["create_model", "list_models", "model_info", "register_model", "is_spec_ref",
           "build_spec"]


def build_spec(spec: "str | Path | Spec | dict", *, width_scale: float | None = None,
               image_size: Any = None, patch: Any = None, spacing: Any = None,
               **options: Any) -> nn.Module:
    """Compile a DSL spec (zoo name, path, ``Spec`` or spec dict) with :func:`skipdsl.compile`'s
    ``options``; ``width_scale`` first scales its level widths and projections as a budget
    does. ``image_size``, ``patch`` and ``spacing`` (what a library baseline is sized by) do
    not change a compiled spec, which takes any size its depth divides."""
    spec = from_dict(spec, source="<dict>") if isinstance(spec, dict) else load(spec)
    if width_scale is not None:
        spec = scale_spec(spec, width_scale)
    return compile(spec, **options)


def _zoo_builder(name: str):
    def build(**options: Any) -> nn.Module:
        return build_spec(name, **options)

    build.__name__ = name
    return build


def _register_zoo() -> None:
    """One entry per zoo spec: its task from ``pyramid:``, its dims from ``dims:`` (a 2D
    UNet-family spec builds in 3D too; the V-Net family is 3D)."""
    for p in sorted(zoo_dir().iterdir(), key=lambda p: p.name):
        if not p.name.endswith(".yaml"):
            continue
        data = yaml.safe_load(p.read_text()) or {}
        name = p.name[:-5]
        pyramid = "pyramid" in data
        dims = (2,) if pyramid else (2, 3) if data.get("dims", 2) == 2 else (3,)
        what = "feature pyramid" if pyramid else "segmentation network"
        register_model(name, task="instance" if pyramid else "semantic", dims=dims,
                       source="zoo", description=f"DSL {what}, zoo/{p.name}"
                       )(_zoo_builder(name))


_register_zoo()


def is_spec_ref(model: Any) -> bool:
    """Whether ``model`` is a spec rather than a registered name: a ``Spec``, a spec dict, or
    a path to an existing file or ending in .yaml/.yml."""
    if isinstance(model, (Spec, dict)):
        return True
    if isinstance(model, (str, Path)):
        p = Path(model)
        return p.suffix in (".yaml", ".yml") or p.is_file()
    return False


def model_info(name: str) -> ModelInfo:
    """The registry entry of ``name``; an unknown name raises :class:`SpecError` naming the
    closest registered ones."""
    return MODELS.get(name)


def create_model(name_or_spec: "str | Path | Spec | dict", **options: Any) -> nn.Module:
    """Build a model: a registered name (:func:`list_models`), a spec file, a ``Spec`` or a
    spec dict (compiled). ``options`` go to the builder; ``None`` values are dropped."""
    options = {k: v for k, v in options.items() if v is not None}
    if is_spec_ref(name_or_spec) and not (isinstance(name_or_spec, str)
                                          and name_or_spec in MODELS
                                          and not Path(name_or_spec).is_file()):
        return build_spec(name_or_spec, **options)
    if not isinstance(name_or_spec, str):
        raise TypeError(f"create_model takes a model name, a spec path, a Spec or a spec dict, "
                        f"not {type(name_or_spec).__name__}")
    if name_or_spec not in MODELS:
        raise SpecError(f"unknown model '{name_or_spec}'",
                        hint=did_you_mean(name_or_spec, MODELS.names())
                        + " (skipdsl.list_models() lists them; or give a path to a .yaml spec)")
    return MODELS.get(name_or_spec).builder(**options)


def list_models(pattern: str = "*", *, task: str | None = None, dims: int | None = None,
                source: str | None = None) -> list[str]:
    """Registered model names, sorted: those matching ``pattern`` (``fnmatch``), of ``task``
    (``semantic`` / ``instance``), built in ``dims`` (2 / 3) and from ``source`` (``zoo``,
    ``baseline``, ``detector``); ``None`` keeps every value."""
    out = []
    for name in MODELS.names():
        m = MODELS.get(name)
        if not fnmatch.fnmatch(name, pattern):
            continue
        if (task is None or m.task == task) and (dims is None or dims in m.dims) \
                and (source is None or m.source == source):
            out.append(name)
    return out
