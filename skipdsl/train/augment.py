"""Batched augmentation on the device: no per-sample Python loop.

Every sample of a batch draws its own transform, but the work is done with whole-batch tensor
ops (``torch.where`` over per-sample masks), so the cost does not grow with Python overhead and
the tensors never leave the device.

- geometry: rot90 by k = 0..3 quarter turns in the last two axes (when they are equal), written
  as "transpose if k odd, flip H if k in (1, 2), flip W if k >= 2", then a random mirror: together
  a uniform draw of the 8 symmetries of the square. In 3D the depth axis is flipped too. The same
  geometry is applied to the image and its mask.
- intensity (image only): per-sample, per-channel contrast ``x * c`` and brightness ``+ b`` on
  normalised images (the brightness/contrast step of the UNet# recipe), with probability ``p``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["AugmentConfig", "augment_batch", "random_crop"]


@dataclass(frozen=True)
class AugmentConfig:
    """What :func:`augment_batch` does. ``rot90`` includes the transposes; ``flip`` the mirrors."""

    rot90: bool = True
    flip: bool = True
    intensity: bool = True
    brightness: float = 0.2  # b ~ U(-brightness, brightness), in units of the normalised image
    contrast: float = 0.2  # c ~ U(1 - contrast, 1 + contrast)
    p_intensity: float = 0.5


def _bits(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return (torch.rand(n, generator=generator) < 0.5).to(device)


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    *,
    config: AugmentConfig = AugmentConfig(),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch ``images (B,C,*spatial)`` and ``masks (B,K,*spatial)`` together.

    Random numbers come from ``generator`` (a CPU generator, so runs are reproducible on any
    device); the transforms run where the tensors are. Returns new tensors.
    """
    if images.shape[0] != masks.shape[0] or images.shape[2:] != masks.shape[2:]:
        raise ValueError(
            f"images and masks must agree on batch and spatial size, got {tuple(images.shape)} "
            f"and {tuple(masks.shape)}"
        )
    n, dev = images.shape[0], images.device
    spatial = images.dim() - 2
    x, y = images, masks
    t = fh = fw = None
    if config.rot90 and images.shape[-1] == images.shape[-2]:
        # rot90(x, k) = transpose if k odd, then flip H if k in (1, 2), then flip W if k >= 2
        k = torch.randint(0, 4, (n,), generator=generator).to(dev)
        t, fh, fw = k % 2 == 1, (k == 1) | (k == 2), k >= 2
    if config.flip:
        m = _bits(n, generator, dev)  # a mirror on top of the rotation: all 8 symmetries
        fw = m if fw is None else fw ^ m
        if fh is None:  # no rotation drawn: mirror H on its own as well
            fh = _bits(n, generator, dev)
    for on, op in ((t, lambda a: a.transpose(-1, -2)), (fh, lambda a: a.flip(-2)),
                   (fw, lambda a: a.flip(-1))):
        if on is not None:
            x, y = _where(on, op(x), x), _where(on, op(y), y)
    if config.flip and spatial == 3:
        fd = _bits(n, generator, dev)
        x, y = _where(fd, x.flip(-3), x), _where(fd, y.flip(-3), y)
    if config.intensity:
        shape = (n, images.shape[1]) + (1,) * spatial
        c = 1 + (torch.rand(shape, generator=generator) * 2 - 1) * config.contrast
        b = (torch.rand(shape, generator=generator) * 2 - 1) * config.brightness
        on = (torch.rand((n,) + (1,) * (spatial + 1), generator=generator) < config.p_intensity)
        c = torch.where(on, c, torch.ones_like(c)).to(dev, x.dtype)
        b = torch.where(on, b, torch.zeros_like(b)).to(dev, x.dtype)
        x = x * c + b
    return x.contiguous(), y.contiguous()


def random_crop(
    images: torch.Tensor,
    masks: torch.Tensor,
    patch: int,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``patch``-sized cube (square in 2D) of each sample, the same for its mask.

    Patch-based training, as nnU-Net does: the networks are fully convolutional, so a model
    trained on patches is evaluated on whole images. Each sample draws its own offset (one
    gather, no per-sample copy loop). ``patch`` at least the image size returns the inputs.
    """
    spatial = images.shape[2:]
    if patch <= 0 or all(patch >= s for s in spatial):
        return images, masks
    n, dev = images.shape[0], images.device
    idx = []
    for ax, size in enumerate(spatial):
        p = min(patch, size)
        start = torch.randint(0, size - p + 1, (n,), generator=generator).to(dev)
        idx.append((start, p, ax))
    x, y = images, masks
    for start, p, ax in idx:
        # gather along spatial axis ax: positions start_b + 0..p-1 for each sample b
        pos = start[:, None] + torch.arange(p, device=dev)[None]  # (B, p)
        shape = [n] + [1] * (x.dim() - 1)
        shape[2 + ax] = p
        pos = pos.view(shape)
        x = x.gather(2 + ax, pos.expand(*x.shape[:2 + ax], p, *x.shape[3 + ax:]))
        y = y.gather(2 + ax, pos.expand(*y.shape[:2 + ax], p, *y.shape[3 + ax:]))
    return x, y
