"""MONAI's V-Net weights in the DSL's V-Net (``zoo/vnet.yaml``): the key mapping.

``zoo/vnet.yaml`` compiles to the network of ``monai.networks.nets.VNet()`` at its defaults
(``spatial_dims=3, in_channels=1, out_channels=1``, ELU, ``bias=False``; any ``spatial_dims``,
``in_channels``, ``out_channels`` and ``act`` in {elu, ``prelu`` = our ``prelu_channel``} with
the same overrides on the spec). The module tree differs only in names; every tensor keeps
its shape and its order. MONAI's key -> ours (``<L>`` is the MONAI stage, ``k`` a unit index):

=====================================================  ==========================================
MONAI ``VNet``                                         skipdsl ``vnet``
=====================================================  ==========================================
``in_tr.conv_block.conv.weight``                       ``x_0_0.conv.weight``
``in_tr.conv_block.adn.N.*``                           ``x_0_0.norm.*``
``in_tr.act_function.*`` (PReLU)                       ``x_0_0.act.*``
``down_tr<L>.down_conv.weight``                        ``edges.x_<i-1>_0__x_<i>_0.resample.conv.weight``
``down_tr<L>.bn1.*``                                   ``edges.x_<i-1>_0__x_<i>_0.resample.norm.*``
``down_tr<L>.act_function1.*``                         ``edges.x_<i-1>_0__x_<i>_0.resample.act.*``
``down_tr<L>.ops.k.conv_block.conv.weight``            ``x_<i>_0.units.k.conv.weight``
``down_tr<L>.ops.k.conv_block.adn.N.*``                ``x_<i>_0.units.k.norm.*``
``down_tr<L>.ops.k.act_function.*``                    ``x_<i>_0.units.k.act.*``
``down_tr<L>.act_function2.*``                         ``x_<i>_0.act.*``
``up_tr<L>.up_conv.{weight,bias}``                     ``edges.x_<i+1>_<j-1>__x_<i>_<j>.resample.conv.*``
``up_tr<L>.bn1.*`` / ``act_function1.*``               ``edges.x_<i+1>_<j-1>__x_<i>_<j>.resample.norm.*`` / ``.act.*``
``up_tr<L>.ops.k.*`` / ``act_function2.*``             ``x_<i>_<j>.units.k.*`` / ``x_<i>_<j>.act.*``
``out_tr.conv_block.conv.weight``                      ``heads.x_0_4.conv.weight``
``out_tr.conv_block.adn.N.*`` / ``act_function1.*``    ``heads.x_0_4.norm.*`` / ``heads.x_0_4.act.*``
``out_tr.conv2.{weight,bias}``                         ``heads.x_0_4.out.*``
=====================================================  ==========================================

Stages: ``down_tr32/64/128/256`` are levels i = 1..4 (encoder nodes ``x_i_0``);
``up_tr256/128/64/32`` are the decoder nodes ``x_3_1, x_2_2, x_1_3, x_0_4`` (level i, column
j = 4 - i). MONAI concatenates ``cat(up, skip)``; the spec's ``order: deep_first`` keeps that
channel order, so no tensor is permuted. Dropout layers have no tensors.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

_DOWN = {"down_tr32": 1, "down_tr64": 2, "down_tr128": 3, "down_tr256": 4}
_UP = {"up_tr256": 3, "up_tr128": 2, "up_tr64": 1, "up_tr32": 0}
_UNIT = [(re.compile(r"^ops\.(\d+)\.conv_block\.conv\.(.+)$"), r"units.\1.conv.\2"),
         (re.compile(r"^ops\.(\d+)\.conv_block\.adn\.N\.(.+)$"), r"units.\1.norm.\2"),
         (re.compile(r"^ops\.(\d+)\.act_function\.(.+)$"), r"units.\1.act.\2")]


def monai_vnet_key(key: str, depth: int = 5) -> str:
    """One MONAI ``VNet`` state-dict key -> the ``vnet`` spec's key (table above)."""
    stage, _, rest = key.partition(".")
    top = depth - 1
    if stage == "in_tr":
        rest = rest.replace("conv_block.conv.", "conv.").replace("conv_block.adn.N.", "norm.")
        return "x_0_0." + rest.replace("act_function.", "act.")
    if stage == "out_tr":
        rest = rest.replace("conv_block.conv.", "conv.").replace("conv_block.adn.N.", "norm.")
        return f"heads.x_0_{top}." + rest.replace("act_function1.", "act.").replace("conv2.", "out.")
    if stage in _DOWN:
        i = _DOWN[stage]
        node, edge = f"x_{i}_0", f"edges.x_{i - 1}_0__x_{i}_0.resample"
    elif stage in _UP:
        i = _UP[stage]
        node, edge = f"x_{i}_{top - i}", f"edges.x_{i + 1}_{top - i - 1}__x_{i}_{top - i}.resample"
    else:
        raise KeyError(f"'{key}' is not a MONAI VNet key (stages: in_tr, down_tr*, up_tr*, out_tr)")
    for pattern, repl in _UNIT:
        if pattern.match(rest):
            return f"{node}." + pattern.sub(repl, rest)
    for monai, ours in (("down_conv.", "conv."), ("up_conv.", "conv."), ("bn1.", "norm."),
                        ("act_function1.", "act.")):
        if rest.startswith(monai):
            return f"{edge}.{ours}{rest[len(monai):]}"
    if rest.startswith("act_function2."):
        return f"{node}.act.{rest[len('act_function2.'):]}"
    raise KeyError(f"'{key}' is not a MONAI VNet key")


def monai_vnet_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A MONAI ``VNet`` state dict with the keys of ``skipdsl.compile('vnet')``, for
    ``model.load_state_dict(monai_vnet_state_dict(monai_model.state_dict()))``."""
    return {monai_vnet_key(k): v for k, v in state.items()}
