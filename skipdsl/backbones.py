"""Encoder backbones from torchvision: the encoder column X[i,0] of the grid, one stage a level.

A spec names one with ``encoder: {backbone: resnet101, weights: none | PATH}``. Each level's
encoder node ``x_i_0`` is then stage i of the torchvision network (torchvision's own modules,
nothing copied), so ``model.code`` calls ``x_i_0 = self.x_i_0(x_(i-1)_0)`` once a stage, and
the decoder grid takes each level's channels and scale from the stages' outputs:

============  =============================  ===========================  ==================
backbone      stages (x_0_0 .. x_4_0)        channels                     scale of x_0_0
============  =============================  ===========================  ==================
vgg16_bn      features split at the pools    64, 128, 256, 512, 512       1 (full size)
resnet34      stem, pool+layer1, layer2..4   64, 64, 128, 256, 512        1/2 (stride-2 stem)
resnet50      stem, pool+layer1, layer2..4   64, 256, 512, 1024, 2048     1/2
resnet101     stem, pool+layer1, layer2..4   64, 256, 512, 1024, 2048     1/2
============  =============================  ===========================  ==================

With a stride-2 stem every level sits at twice the usual scale: inputs must be multiples of
2^depth, and heads on level-0 nodes upsample their logits x2 (``match: upsample``).

Weights come only from a local file the user names (a torchvision state dict of that
architecture, e.g. saved with ``torch.save(torchvision.models.resnet101(weights=...)
.state_dict(), PATH)`` on a machine with internet); nothing is downloaded. ``weights: none``
(the default) keeps the He initialisation. Other input channels than 3 adapt the first conv
(summed RGB filters for 1 channel, cycled and rescaled otherwise, as segmentation_models_pytorch).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import SpecError
from .registry import Registry


@dataclass(frozen=True)
class Backbone:
    """What the grid needs to know before building: stage channels and level-0 scale."""

    channels: tuple[int, ...]
    first_scale_log2: int  # x_0_0 sits at 1 / 2**first_scale_log2 of the input size
    first_conv: str  # state-dict key of the first convolution's weight
    build: Callable[[], tuple[nn.Module, list[nn.Module]]]  # -> (whole network, stages)


BACKBONES: Registry[Backbone] = Registry("backbone")


def _vgg16_bn():
    from torchvision.models import vgg16_bn

    net = vgg16_bn(weights=None)
    feats = list(net.features)
    pools = [k for k, m in enumerate(feats) if isinstance(m, nn.MaxPool2d)]
    bounds = [0] + pools[:4] + [pools[4]]  # the last pool (to 1/32) is not a stage
    stages = [nn.Sequential(*feats[bounds[s]:bounds[s + 1]]) for s in range(5)]
    return net, stages


def _resnet(name: str):
    def build():
        import torchvision.models as tvm

        net = getattr(tvm, name)(weights=None)
        stages = [nn.Sequential(net.conv1, net.bn1, net.relu),
                  nn.Sequential(net.maxpool, net.layer1), net.layer2, net.layer3, net.layer4]
        return net, stages
    return build


BACKBONES.register("vgg16_bn")(Backbone((64, 128, 256, 512, 512), 0, "features.0.weight",
                                        _vgg16_bn))
BACKBONES.register("resnet34")(Backbone((64, 64, 128, 256, 512), 1, "conv1.weight",
                                        _resnet("resnet34")))
BACKBONES.register("resnet50")(Backbone((64, 256, 512, 1024, 2048), 1, "conv1.weight",
                                        _resnet("resnet50")))
BACKBONES.register("resnet101")(Backbone((64, 256, 512, 1024, 2048), 1, "conv1.weight",
                                         _resnet("resnet101")))


def _adapt_first_conv(w: torch.Tensor, in_channels: int) -> torch.Tensor:
    if in_channels == w.shape[1]:
        return w
    if in_channels == 1:
        return w.sum(dim=1, keepdim=True)
    idx = torch.arange(in_channels) % w.shape[1]
    return w[:, idx] * (w.shape[1] / in_channels)


def _first_conv_parent(net: nn.Module, key: str) -> tuple[nn.Module, str]:
    path = key.rsplit(".", 1)[0]  # 'conv1' or 'features.0'
    parent, _, attr = path.rpartition(".")
    return (net.get_submodule(parent) if parent else net), attr


class BackboneEncoder:
    """A built backbone: the whole torchvision network (for loading its state dict) and its
    stages (the modules that become ``x_i_0``; they share the network's tensors)."""

    def __init__(self, name: str, in_channels: int, depth: int) -> None:
        self.name = name
        self.info = BACKBONES.get(name)
        self.net, stages = self.info.build()
        self.in_channels = in_channels
        if in_channels != 3:
            parent, attr = _first_conv_parent(self.net, self.info.first_conv)
            old = getattr(parent, attr)
            new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride,
                            old.padding, bias=old.bias is not None)
            setattr(parent, attr, new)
            for st in stages[:1]:  # the stem holds the same conv: swap it there too
                for k, m in st.named_children():
                    if m is old:
                        setattr(st, k, new)
        self.stages = stages[:depth]

    def load(self, path: str | Path, *, spec_file: str | None = None) -> None:
        """Load a torchvision state dict of this architecture from ``path`` (strict)."""
        p = Path(path).expanduser()
        what = (f"a torchvision {self.name} state dict, e.g. torch.save(torchvision.models."
                f"{self.name}(weights=...).state_dict(), '{p}') on a machine with internet, or "
                "'weights: none'")
        if not p.is_file():
            raise SpecError(f"backbone weights file '{p}' does not exist", file=spec_file,
                            found=str(p.resolve()), hint=f"give the path of {what}")
        try:
            sd = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same answer
            raise SpecError(f"backbone weights file '{p}' cannot be read: "
                            f"{type(e).__name__}: {str(e)[:200]}", file=spec_file,
                            hint=f"give {what}") from None
        if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise SpecError(f"backbone weights file '{p}' holds no state dict (name -> tensor)",
                            file=spec_file, found=type(sd).__name__, hint=f"give {what}")
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        key = self.info.first_conv
        if key in sd and sd[key].dim() == 4:
            sd[key] = _adapt_first_conv(sd[key], self.in_channels)
        own = self.net.state_dict()
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        shapes = [f"{k}: file {tuple(sd[k].shape)}, {self.name} {tuple(own[k].shape)}"
                  for k in own if k in sd and sd[k].shape != own[k].shape]
        if missing or unexpected or shapes:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
            if shapes:
                parts.append(f"{len(shapes)} of another shape (e.g. {shapes[0]})")
            raise SpecError(f"backbone weights file '{p}' does not fit {self.name}: "
                            + "; ".join(parts) + " keys", file=spec_file,
                            hint=f"give {what}")
        self.net.load_state_dict(sd, strict=True)
