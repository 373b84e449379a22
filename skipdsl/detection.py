"""Feature-pyramid specs as torchvision detection backbones: Mask R-CNN over a skip graph.

A spec with ``pyramid:`` (zoo: ``fpn``, ``fpn_pp``, ``fpn_3p``, ``fpn_sharp``) compiles, through
the one compiler, to a module returning ``{'0': P2, '1': P3, ..., 'pool': P6}``.
:class:`PyramidBackbone` gives it torchvision's backbone-with-FPN interface (``out_channels``
and an ``OrderedDict`` of feature maps), so it plugs into
``torchvision.models.detection.MaskRCNN`` like ``BackboneWithFPN`` does; :func:`maskrcnn`
builds that detector. :func:`torchvision_fpn_state_dict` maps the tensors of torchvision's
``BackboneWithFPN`` over a ResNet (``body.*`` and ``fpn.*``) to the ``fpn`` spec's keys:

==============================================  =============================================
torchvision ``BackboneWithFPN``                 skipdsl ``fpn`` (over the same ResNet)
==============================================  =============================================
``body.conv1.*`` / ``body.bn1.*``               ``x_0_0.0.*`` / ``x_0_0.1.*`` (the stem)
``body.layer1.*``                               ``x_1_0.1.*`` (max pool + layer1)
``body.layer<k>.*``, k = 2, 3, 4                ``x_<k>_0.*``
``fpn.inner_blocks.<k>.0.*`` (lateral 1x1)      ``edges.x_<k+1>_0__<level k node>.project.conv.*``
``fpn.layer_blocks.<k>.0.*`` (output 3x3)       ``heads.<level k node>.*``
==============================================  =============================================

where the level-k node is ``pyramid.nodes[k]`` (``x_1_4, x_2_3, x_3_2, x_4_1`` in ``fpn``).
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .errors import SpecError
from .registry import register_model
from .spec import Spec, load, scale_spec

__all__ = ["PyramidBackbone", "maskrcnn", "torchvision_fpn_state_dict", "pyramid_spec",
           "MASKRCNN_MODELS"]

#: ``bench run --task instance`` model names -> zoo pyramid specs
MASKRCNN_MODELS = {"maskrcnn_fpn": "fpn", "maskrcnn_pp": "fpn_pp", "maskrcnn_3p": "fpn_3p",
                   "maskrcnn_sharp": "fpn_sharp"}


def pyramid_spec(name: "str | Spec | dict") -> Spec:
    """A pyramid spec from a Mask R-CNN model name (``maskrcnn_sharp``), a zoo name
    (``fpn_sharp``), a path, a spec dict or a ``Spec``; a spec without ``pyramid:`` is refused."""
    from .spec import from_dict

    if isinstance(name, dict):
        spec = from_dict(name, source="<config>")
    else:
        spec = load(MASKRCNN_MODELS.get(name, name) if isinstance(name, str) else name)
    if spec.pyramid is None:
        raise SpecError(f"spec '{spec.name}' has no 'pyramid:' section: it is not a detection "
                        "backbone", file=spec.source,
                        hint="use a pyramid spec (zoo: fpn, fpn_pp, fpn_3p, fpn_sharp) or "
                        f"a Mask R-CNN name ({', '.join(MASKRCNN_MODELS)})")
    return spec


class PyramidBackbone(nn.Module):
    """A compiled pyramid spec with torchvision's backbone-with-FPN interface:
    ``out_channels`` and ``forward(x) -> OrderedDict[str, Tensor]`` ('0'.., 'pool')."""

    def __init__(self, spec: "str | Spec", **compile_kwargs: Any) -> None:
        super().__init__()
        from .compiler import compile

        spec = pyramid_spec(spec)
        self.body = compile(spec, **compile_kwargs)
        self.out_channels = self.body.spec.pyramid.channels
        self.spec = self.body.spec
        if self.spec.init == "torch":  # the backbone keeps torchvision's init; the pyramid's
            init_fpn(self.body)         # convs get FeaturePyramidNetwork's

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict(self.body(x))


def init_fpn(model: nn.Module) -> None:
    """torchvision ``FeaturePyramidNetwork``'s init (``kaiming_uniform_(a=1)``, bias 0) for
    every convolution of a compiled pyramid outside its encoder column (x_i_0)."""
    for name, m in model.named_modules():
        top = name.split(".")[0]
        if isinstance(m, nn.Conv2d) and not re.fullmatch(r"x_\d+_0", top):
            nn.init.kaiming_uniform_(m.weight, a=1)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def maskrcnn(spec: "str | Spec", num_classes: int = 2, *, in_channels: int | None = None,
             anchor_sizes: Sequence[int] | None = None, image_size: int | None = None,
             image_mean: Sequence[float] | None = None, image_std: Sequence[float] | None = None,
             roi_width: int | None = None, **kwargs: Any) -> nn.Module:
    """``torchvision.models.detection.MaskRCNN`` over a pyramid spec (``num_classes`` counts
    the background). ``anchor_sizes``: one size per pyramid level ('pool' included; default
    torchvision's 32..512), aspect ratios 0.5, 1, 2. ``image_size``: the transform's min and
    max size (default torchvision's 800/1333). ``image_mean``/``image_std``: the transform's
    normalisation (default ImageNet's). ``roi_width``: the mask head's conv width and a
    quarter of the box head's MLP width (default torchvision's 256 and 1024); ``kwargs`` go
    to ``MaskRCNN`` (box_batch_size_per_image, box_detections_per_img, ...). Returns the detector; ``detector.backbone.body`` is the
    compiled pyramid (``.code``, ``.dag``)."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    backbone = PyramidBackbone(spec, in_channels=in_channels)
    levels = len(backbone.spec.pyramid.nodes) + int(backbone.spec.pyramid.pool)
    if anchor_sizes is not None:
        if len(anchor_sizes) != levels:
            raise ValueError(f"{len(anchor_sizes)} anchor sizes for {levels} pyramid levels "
                             f"(spec '{backbone.spec.name}'); give one per level")
        kwargs["rpn_anchor_generator"] = AnchorGenerator(
            tuple((int(s),) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * levels)
    if image_size is not None:
        kwargs.setdefault("min_size", int(image_size))
        kwargs.setdefault("max_size", int(image_size))
    n_in = in_channels or backbone.spec.in_channels
    if image_mean is None and n_in != 3:
        image_mean, image_std = [0.0] * n_in, [1.0] * n_in
    if roi_width is not None:  # torchvision's RoI heads at another width (ratios kept)
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
        from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

        c, rep = backbone.out_channels, 4 * int(roi_width)
        kwargs.setdefault("box_head", TwoMLPHead(c * 7 * 7, rep))
        kwargs.setdefault("box_predictor", FastRCNNPredictor(rep, num_classes))
        kwargs.setdefault("mask_head", MaskRCNNHeads(c, (int(roi_width),) * 4, 1))
        kwargs.setdefault("mask_predictor", MaskRCNNPredictor(int(roi_width), int(roi_width),
                                                              num_classes))
        num_classes = None  # given to the predictors (MaskRCNN refuses both)
    names = [str(k) for k in range(len(backbone.spec.pyramid.nodes))]
    if "box_roi_pool" not in kwargs:
        from torchvision.ops import MultiScaleRoIAlign

        kwargs["box_roi_pool"] = MultiScaleRoIAlign(names, 7, 2)
        kwargs["mask_roi_pool"] = MultiScaleRoIAlign(names, 14, 2)
    return MaskRCNN(backbone, num_classes=num_classes, image_mean=image_mean,
                    image_std=image_std, **kwargs)


_BODY = [(re.compile(r"^body\.conv1\.(.+)$"), r"x_0_0.0.\1"),
         (re.compile(r"^body\.bn1\.(.+)$"), r"x_0_0.1.\1"),
         (re.compile(r"^body\.layer1\.(.+)$"), r"x_1_0.1.\1"),
         (re.compile(r"^body\.layer([234])\.(.+)$"), r"x_\1_0.\2")]
_FPN = re.compile(r"^fpn\.(inner|layer)_blocks\.(\d+)\.0\.(weight|bias)$")


def torchvision_fpn_state_dict(state: Mapping[str, torch.Tensor], spec: "str | Spec" = "fpn"
                               ) -> dict[str, torch.Tensor]:
    """A torchvision ``BackboneWithFPN`` state dict (ResNet body, ``returned_layers`` 1-4)
    with the keys of the compiled pyramid ``spec`` (table above), for
    ``model.load_state_dict(torchvision_fpn_state_dict(bwf.state_dict()))``. The spec must
    have FPN's tensors: one lateral edge from ``x_<k+1>_0`` into each pyramid node."""
    from .graph import build_graph

    spec = pyramid_spec(spec)
    dag = build_graph(spec)
    nodes = spec.pyramid.nodes
    out = {}
    for key, value in state.items():
        m = _FPN.match(key)
        if m:
            kind, k, what = m.group(1), int(m.group(2)), m.group(3)
            if k >= len(nodes):
                raise KeyError(f"'{key}': the spec's pyramid has {len(nodes)} levels")
            node = nodes[k]
            if kind == "layer":
                out[f"heads.{node}.{what}"] = value
                continue
            src = f"x_{dag.nodes[node]['level']}_0"
            if not dag.has_edge(src, node) or not dag.edges[src, node].get("project"):
                raise KeyError(f"'{key}': spec '{spec.name}' has no lateral edge {src} -> {node}")
            out[f"edges.{src}__{node}.project.conv.{what}"] = value
            continue
        for pattern, repl in _BODY:
            if pattern.match(key):
                out[pattern.sub(repl, key)] = value
                break
        else:
            raise KeyError(f"'{key}' is not a BackboneWithFPN key over a ResNet "
                           "(body.conv1/bn1/layer1-4, fpn.inner_blocks, fpn.layer_blocks)")
    return out


def _maskrcnn_builder(name: str, pyramid: str):
    def build(*, width_scale: float | None = None, **options: Any) -> nn.Module:
        spec = load(pyramid)
        return maskrcnn(spec if width_scale is None else scale_spec(spec, width_scale),
                        **options)

    build.__name__ = name
    return build


for _name, _pyramid in MASKRCNN_MODELS.items():  # skipdsl.create_model("maskrcnn_sharp", ...)
    register_model(_name, task="instance", dims=(2,), source="detector",
                   description=f"Mask R-CNN over the zoo pyramid {_pyramid} (torchvision)"
                   )(_maskrcnn_builder(_name, _pyramid))

