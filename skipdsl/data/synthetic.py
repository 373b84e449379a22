"""Built-in synthetic datasets, each with the difficulty its real counterpart is known for.

Everything is generated with vectorised numpy from one ``np.random.default_rng(seed)``, so a
(name, n, seed) triple always gives the same arrays. Shapes are drawn as lobulated, rotated
ellipses (:func:`_shape_sdf`, an approximate signed distance in pixels, negative inside);
textures are Gaussian-filtered white noise (:func:`_smooth_noise`, done in Fourier space so
large blurs cost the same as small ones). CT-like datasets are simulated in Hounsfield units
and windowed exactly like their real loaders; MRI and microscopy are z-scored per sample.

=================  ===========================  =============================================
name               counterpart                  difficulty reproduced
=================  ===========================  =============================================
nuclei2d           DSB2018 (Kaggle nuclei)      many small touching nuclei; fluorescence,
                                                H&E and brightfield stainings; dim nuclei
brain_tumor2d      BraTS (MRI, 4 sequences)     nested WT ⊃ TC ⊃ ET, irregular shapes, rims
                                                with gaps, ET absent (LGG-like), ~half the
                                                slices without tumour
liver2d            LiTS (CT, slice + 2 nbrs)    large organ, fuzzy low-contrast boundary,
                                                size varying with slice height, spleen of
                                                liver-like density, ~half slices empty
lung_nodule2d      LIDC-IDRI (CT slices)        small nodules among vessel cross-sections,
                                                juxtapleural and ground-glass ones, ~30% empty
lung_nodule3d      LUNA16 (64^3 CT patches)     small spheres among tubular vessels, chest
                                                wall, ~25% empty
=================  ===========================  =============================================
"""
from __future__ import annotations

import numpy as np

from .arrays import CT_LIVER_WINDOW, CT_LUNG_WINDOW, window, zscore
from .base import SIZE_2D, SIZE_3D, SegDataset, synthetic

F32 = np.float32


# --------------------------------------------------------------------------- primitives


def _smooth_noise(rng: np.random.Generator, n: int, shape: tuple[int, ...],
                  sigma: float) -> np.ndarray:
    """``(n, *shape)`` Gaussian-filtered white noise (periodic), zero mean and unit std per
    sample (the mean is removed: with a wide filter it would dominate the field).

    Drawn directly in Fourier space (complex white noise times the Gaussian's transfer
    function, one single-precision inverse FFT), so wide filters cost nothing extra.
    """
    from scipy import fft

    half = (*shape[:-1], shape[-1] // 2 + 1)
    spec = np.empty((n, *half), np.complex64)
    spec.real = rng.standard_normal(spec.shape, dtype=F32)
    spec.imag = rng.standard_normal(spec.shape, dtype=F32)
    freqs = [np.fft.fftfreq(s) for s in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
    k2 = sum(f.reshape([-1 if i == j else 1 for j in range(len(shape))]) ** 2
             for i, f in enumerate(freqs))
    spec *= np.exp(-2 * np.pi**2 * sigma**2 * k2).astype(F32)
    spec[(slice(None),) + (0,) * len(shape)] = 0  # no DC term: zero mean by construction
    axes = tuple(range(1, len(shape) + 1))
    out = fft.irfftn(spec, s=shape, axes=axes, workers=-1).astype(F32, copy=False)
    out -= out.mean(axis=axes, keepdims=True, dtype=F32)
    out /= out.std(axis=axes, keepdims=True, dtype=F32) + 1e-8
    return out


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over the spatial axes of a batch ``(n, *spatial)``."""
    from scipy import ndimage

    return ndimage.gaussian_filter(x, sigma=(0,) + (sigma,) * (x.ndim - 1)).astype(F32)


def _grid2d(size: int = SIZE_2D) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(F32)
    return yy, xx


def _col(v: np.ndarray | float, ndim: int = 2) -> np.ndarray:
    """A per-sample value ``(n,)`` shaped to broadcast against ``(n, *spatial)``."""
    return np.asarray(v, dtype=F32).reshape((-1,) + (1,) * ndim)


def _shape_sdf(yy: np.ndarray, xx: np.ndarray, cy, cx, ry, rx, angle=0.0, amps=None,
               phases=None) -> np.ndarray:
    """Approximate signed distance (pixels, < 0 inside) to lobulated rotated ellipses.

    All shape parameters are per-sample arrays ``(n,)`` (or scalars); ``amps``/``phases``
    ``(n, h)`` modulate the radius by ``1 + sum_k a_k cos((k + 2) theta + phi_k)``.
    """
    dy, dx = yy[None] - _col(cy), xx[None] - _col(cx)
    c, s = np.cos(_col(angle)), np.sin(_col(angle))
    u, v = (dx * c + dy * s) / _col(rx), (-dx * s + dy * c) / _col(ry)
    rho = np.sqrt(u * u + v * v)
    radius = np.ones_like(rho)
    if amps is not None:
        theta = np.arctan2(v, u)
        for k in range(amps.shape[1]):
            radius += _col(amps[:, k]) * np.cos((k + 2) * theta + _col(phases[:, k]))
    return (rho - radius) * np.sqrt(_col(rx) * _col(ry))


def _lobes(rng: np.random.Generator, n: int, h: int, lo: float, hi: float):
    """Random harmonic amplitudes/phases ``(n, h)`` for :func:`_shape_sdf`."""
    amps = rng.uniform(lo, hi, (n, 1)).astype(F32) * rng.uniform(0, 1, (n, h)).astype(F32)
    return amps, rng.uniform(0, 2 * np.pi, (n, h)).astype(F32)


def _soft(sdf: np.ndarray, width: float | np.ndarray = 0.7) -> np.ndarray:
    """Soft inside-ness in [0, 1] of a signed distance field (partial-volume edge)."""
    return (1.0 / (1.0 + np.exp(np.clip(sdf / width, -30, 30)))).astype(F32)


def _ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:04d}" for i in range(n)]


# --------------------------------------------------------------------------- nuclei2d


def _nuclei_layout(rng: np.random.Generator, n: int, size: int) -> dict[str, np.ndarray]:
    """Per-nucleus parameters for ``n`` images: 6-41 nuclei each, partly in tight clusters.

    Arrays are ``(n, kmax)``; ``valid`` marks the nuclei that exist.
    """
    k = rng.integers(6, 42, n)
    kmax = int(k.max())
    base = rng.uniform(3.2, 6.5, (n, 1))
    clusters = rng.uniform(12, size - 12, (n, 3, 2))
    pick = rng.integers(0, rng.integers(1, 4, (n, 1)), (n, kmax))
    near = clusters[np.arange(n)[:, None], pick] + rng.normal(0, 1, (n, kmax, 2)) * \
        rng.uniform(5, 14, (n, 1, 1))
    clustered = rng.random((n, kmax)) < rng.uniform(0.3, 1.0, (n, 1))
    centre = np.where(clustered[..., None], near, rng.uniform(2, size - 2, (n, kmax, 2)))
    rx = base * rng.uniform(0.8, 1.25, (n, kmax))
    amps, phases = _lobes(rng, n * kmax, 2, 0.0, 0.12)
    return {"valid": np.arange(kmax)[None] < k[:, None], "cy": centre[..., 0],
            "cx": centre[..., 1], "rx": rx, "ry": rx * rng.uniform(0.62, 1.0, (n, kmax)),
            "angle": rng.uniform(0, np.pi, (n, kmax)), "amps": amps.reshape(n, kmax, 2),
            "phases": phases.reshape(n, kmax, 2),
            "level": rng.uniform(0.45, 1.0, (n, kmax))}


def _nuclei_instances(lay: dict[str, np.ndarray], n: int, size: int, reach: int = 10):
    """Rasterise all nuclei at once in small patches; each pixel goes to the nucleus whose
    (normalised) shape distance is smallest, so overlapping nuclei end up touching.

    Returns ``(instances (n, H, W) int32, nucleus index per instance id)``.
    """
    img, nuc = np.nonzero(lay["valid"])
    p = {k: v[img, nuc].astype(F32) for k, v in lay.items() if k != "valid"}
    off = np.arange(-reach, reach + 1, dtype=F32)
    py = np.rint(p["cy"]).astype(F32)[:, None, None] + off[None, :, None]
    px = np.rint(p["cx"]).astype(F32)[:, None, None] + off[None, None, :]
    dy, dx = py - p["cy"][:, None, None], px - p["cx"][:, None, None]
    c, s = np.cos(p["angle"])[:, None, None], np.sin(p["angle"])[:, None, None]
    u, v = (dx * c + dy * s) / p["rx"][:, None, None], (-dx * s + dy * c) / p["ry"][:, None, None]
    theta = np.arctan2(v, u)
    radius = 1 + sum(p["amps"][:, j, None, None] * np.cos((j + 2) * theta
                                                           + p["phases"][:, j, None, None])
                     for j in range(2))
    d = (np.sqrt(u * u + v * v) / radius).astype(F32)
    keep = (d < 1) & (py >= 0) & (py < size) & (px >= 0) & (px < size)
    pix = (img[:, None, None] * size * size + py * size + px).astype(np.int64)[keep]
    d, lab = d[keep], np.broadcast_to((nuc + 1)[:, None, None], keep.shape)[keep]
    best = np.full(n * size * size, np.inf, F32)
    np.minimum.at(best, pix, d)
    win = d == best[pix]
    inst = np.zeros(n * size * size, np.int32)
    inst[pix[win]] = lab[win]
    return inst.reshape(n, size, size)


def _touching(inst: np.ndarray) -> np.ndarray:
    """Pixels where two different instances meet (batch ``(n, H, W)``)."""
    out = np.zeros(inst.shape, bool)
    for ax in (1, 2):
        a, b = np.delete(inst, -1, ax), np.delete(inst, 0, ax)
        edge = (a != b) & (a > 0) & (b > 0)
        lo, hi = [(0, 0)] * 3, [(0, 0)] * 3
        lo[ax], hi[ax] = (0, 1), (1, 0)
        out |= np.pad(edge, lo) | np.pad(edge, hi)
    return out


def _stain(rng: np.random.Generator, f: np.ndarray) -> np.ndarray:
    """Render nucleus intensity ``(n, H, W)`` as RGB in one of three staining styles."""
    n = f.shape[0]
    style = rng.choice(3, n, p=[0.5, 0.25, 0.25])  # fluorescence, H&E, brightfield gray
    grey = rng.random(n) < 0.7
    tint = np.where(grey[:, None], 1.0, rng.uniform(0.2, 1.0, (n, 3)))
    fluo_bg = np.repeat(rng.uniform(0.0, 0.12, (n, 1)), 3, 1)
    fluo_fg = np.clip(fluo_bg + rng.uniform(0.55, 1.0, (n, 1)) * tint, 0, 1)
    he_bg = np.array([0.93, 0.80, 0.88]) * rng.uniform(0.88, 1.0, (n, 1))
    he_fg = np.array([0.36, 0.20, 0.55]) * rng.uniform(0.75, 1.25, (n, 1))
    bf_bg = np.repeat(rng.uniform(0.7, 0.92, (n, 1)), 3, 1)
    bf_fg = np.repeat(rng.uniform(0.25, 0.5, (n, 1)), 3, 1)
    bg = np.choose(style[:, None], [fluo_bg, he_bg, bf_bg]).astype(F32)
    fg = np.choose(style[:, None], [fluo_fg, he_fg, bf_fg]).astype(F32)
    size = f.shape[1:]
    tissue = _smooth_noise(rng, n, size, 2.0) * _col(np.where(style == 1, 0.12, 0.015))
    light = 1.0 + 0.08 * _smooth_noise(rng, n, size, 24.0)
    chroma = 1.0 + 0.18 * _smooth_noise(rng, n, size, 1.2)
    ff = np.clip(f * chroma, 0, 1)[:, None]
    eosin = np.array([0.15, 1.0, 0.45], F32)[None, :, None, None]  # cytoplasm: pinker
    rgb = (bg[:, :, None, None] * (1 - tissue[:, None] * eosin) + ff * (fg - bg)[:, :, None, None])
    rgb = rgb * light[:, None] + rng.standard_normal(rgb.shape, dtype=F32) * _col(
        rng.uniform(0.01, 0.05, n), 3)
    return np.clip(rgb, 0, 1).astype(F32)


@synthetic("nuclei2d", dims=2, default_n=320)
def nuclei2d(n: int, seed: int) -> SegDataset:
    """DSB2018-like nuclei: 96x96 RGB, many small touching blobs, varied staining.

    Instance label maps are kept in ``instances``; the mask is their union.
    """
    rng = np.random.default_rng(seed)
    lay = _nuclei_layout(rng, n, SIZE_2D)
    inst = _nuclei_instances(lay, n, SIZE_2D)
    level = np.concatenate([np.zeros((n, 1), F32), lay["level"].astype(F32)], axis=1)
    f = level[np.arange(n)[:, None, None], inst] * (1.0 - 0.45 * _touching(inst))
    f = _blur(f, 0.7)
    rgb = _stain(rng, f)
    images = np.stack([zscore(x) for x in rgb])
    masks = (inst > 0)[:, None].astype(np.uint8)
    return SegDataset.create("nuclei2d", 2, images, masks, ["nucleus"], _ids("nuclei", n),
                             instances=inst, seed=seed,
                             meta={"normalisation": "z-score per image and channel",
                                   "display": "rgb"})


# --------------------------------------------------------------------------- brain_tumor2d

# tissue -> intensity in (T1, T1ce, T2, FLAIR)
_MRI = {
    "wm": (0.85, 0.85, 0.35, 0.50),
    "gm": (0.62, 0.62, 0.52, 0.62),
    "csf": (0.18, 0.18, 1.00, 0.08),
    "edema": (0.55, 0.55, 0.88, 1.00),
    "necrosis": (0.25, 0.25, 0.95, 0.50),
    "enhancing": (0.55, 1.30, 0.65, 0.75),
    "core_lgg": (0.40, 0.42, 0.85, 0.72),
}


def _brain_regions(rng: np.random.Generator, n: int):
    """Brain outline, white-matter weight and CSF weight for n axial slices."""
    yy, xx = _grid2d()
    level = rng.uniform(0.45, 1.0, n)
    cy, cx = 48 + rng.normal(0, 1.5, n), 48 + rng.normal(0, 1.5, n)
    ry, rx = 41 * level * rng.uniform(0.93, 1.05, n), 34 * level * rng.uniform(0.93, 1.05, n)
    amps, ph = _lobes(rng, n, 3, 0.0, 0.04)
    sdf = _shape_sdf(yy, xx, cy, cx, ry, rx, rng.normal(0, 0.08, n), amps, ph)
    g = _smooth_noise(rng, n, (96, 96), 2.5)
    wm = 1 / (1 + np.exp(-((-sdf - 6.0) / 2.0 + 1.3 * g)))
    vent = np.zeros_like(sdf)
    vsize = rng.uniform(0.5, 1.5, n) * (level > 0.6)
    for side in (-1, 1):
        v = _shape_sdf(yy, xx, cy - 3, cx + side * 6 * level, 11 * vsize + 1e-3,
                       3.5 * vsize + 1e-3, side * 0.3)
        vent = np.maximum(vent, _soft(v, 0.8))
    sulci = _soft(-(sdf + 4.0), 0.8) * (_smooth_noise(rng, n, (96, 96), 1.2) > 0.5)
    csf = np.clip(np.maximum(vent, sulci), 0, 1).astype(F32)
    return sdf, wm.astype(F32), csf, (cy, cx, ry, rx), level


def _tumours(rng: np.random.Generator, n: int, geom, level):
    """WT ⊃ TC ⊃ ET boolean maps and the LGG flag (tumour in about half the slices)."""
    yy, xx = _grid2d()
    cy, cx, ry, rx = geom
    has = rng.random(n) < 0.5
    phi, frac = rng.uniform(0, 2 * np.pi, n), np.sqrt(rng.random(n)) * 0.55
    ty, tx = cy + ry * frac * np.sin(phi), cx + rx * frac * np.cos(phi)
    r_wt = rng.uniform(6, 20, n) * np.sqrt(level) * has + 1e-3
    a, p = _lobes(rng, n, 3, 0.05, 0.3)
    wt = _shape_sdf(yy, xx, ty, tx, r_wt, r_wt * rng.uniform(0.75, 1.0, n),
                    rng.uniform(0, np.pi, n), a, p) < 0
    has_tc = has & (rng.random(n) < 0.85)
    r_tc = r_wt * rng.uniform(0.35, 0.7, n) * has_tc + 1e-3
    a, p = _lobes(rng, n, 3, 0.0, 0.25)
    off = rng.uniform(-0.2, 0.2, (2, n)) * r_wt
    sdf_tc = _shape_sdf(yy, xx, ty + off[0], tx + off[1], r_tc, r_tc * rng.uniform(0.75, 1, n),
                        rng.uniform(0, np.pi, n), a, p)
    tc = (sdf_tc < 0) & wt
    lgg = rng.random(n) < 0.3
    thick = _col(rng.uniform(1.5, 3.5, n))
    gaps = _smooth_noise(rng, n, (96, 96), 3.0) > _col(rng.uniform(-1.5, -0.2, n))
    rim = (sdf_tc > -thick) | (r_tc < 4.5)[:, None, None]
    et = tc & rim & gaps & ~lgg[:, None, None]
    return wt, tc, et, lgg


@synthetic("brain_tumor2d", dims=2, default_n=320)
def brain_tumor2d(n: int, seed: int) -> SegDataset:
    """BraTS-like axial MRI slices: 96x96, 4 channels (T1, T1ce, T2, FLAIR).

    Masks are the nested regions WT ⊃ TC ⊃ ET; about half the slices have no tumour and
    LGG-like tumours have no enhancing part.
    """
    rng = np.random.default_rng(seed)
    sdf, wm, csf, geom, level = _brain_regions(rng, n)
    wt, tc, et, lgg = _tumours(rng, n, geom, level)
    t = {k: np.asarray(v, F32)[:, None, None, None] * rng.uniform(0.93, 1.07, (4, n, 1, 1))
         .astype(F32) for k, v in _MRI.items()}  # (4 sequences, n, 1, 1)
    img = t["wm"] * wm + t["gm"] * (1 - wm)
    img = img * (1 - csf) + t["csf"] * csf
    edema = (wt & ~tc).astype(F32) * rng.uniform(0.75, 1.0, n)[:, None, None].astype(F32)
    img = img * (1 - edema) + t["edema"] * edema
    core = np.where(lgg[:, None, None], t["core_lgg"], t["necrosis"])
    img = np.where(tc & ~et, core, img)
    img = np.where(et, t["enhancing"], img)
    img = img.transpose(1, 0, 2, 3)  # (n, 4, H, W)
    bias = 1 + 0.12 * _smooth_noise(rng, n * 4, (96, 96), 30.0).reshape(n, 4, 96, 96)
    img = _blur(img.reshape(n * 4, 96, 96), 0.7).reshape(n, 4, 96, 96) * bias
    img += 0.035 * rng.standard_normal(img.shape, dtype=F32)
    brain = (sdf < 0)[:, None]
    images = np.stack([zscore(x, where=b) for x, b in zip(img, brain)])
    masks = np.stack([wt, tc, et], axis=1).astype(np.uint8)
    return SegDataset.create("brain_tumor2d", 2, images, masks, ["WT", "TC", "ET"],
                             _ids("brain", n), seed=seed,
                             meta={"normalisation": "z-score per channel over brain voxels",
                                   "channels": ["T1", "T1ce", "T2", "FLAIR"],
                                   "display_channel": 3})


# --------------------------------------------------------------------------- liver2d


def _rising(t: np.ndarray, lo: float, hi: float, power: float = 0.6) -> np.ndarray:
    """Organ size over relative slice height: 0 outside ``[lo, hi]``, a smooth bump inside."""
    return (np.clip(np.sin(np.pi * (t - lo) / (hi - lo)), 0, 1) ** power).astype(F32)


def _abdomen_slice(p: dict, t: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HU image and liver mask of contrast-enhanced abdomen slices at relative heights ``t``."""
    yy, xx = _grid2d()
    ay, ax = p["ay"], p["ax"]
    body = _shape_sdf(yy, xx, 50, 48, p["ay"], p["ax"], 0.0, p["body_a"], p["body_p"])
    wall = body + _col(p["fat"])
    inner = wall + 2.5
    hu = np.where(body < 0, -100.0, -1000.0).astype(F32)
    hu = np.where(wall < 0, 50.0, hu)  # abdominal wall muscle
    bowel = np.where(p["gas"] > 2.0, -900.0, 25 + 30 * p["tex"])
    hu = np.where(inner < 0, np.where(p["loops"] > 0.0, bowel, -90.0), hu)
    spine_y = 50 + ay * 0.62
    for side in (-1, 1):  # psoas muscles, kidneys
        ps = _shape_sdf(yy, xx, spine_y - 2, 48 + side * 11, 6, 4.5, side * 0.4)
        hu = np.where(ps < 0, 50.0, hu)
        kid = _rising(t, 0.4, 0.85)
        k = _shape_sdf(yy, xx, spine_y - 6, 48 + side * ax * 0.45, 7.5 * kid + 1e-3,
                       5 * kid + 1e-3, side * 0.5)
        hu = np.where(k < 0, 165.0, hu)
    spl = _rising(t, 0.15, 0.6) * p["spleen_on"]
    sp = _shape_sdf(yy, xx, 46 + ay * 0.15, 48 + ax * 0.62, 11 * spl + 1e-3, 6 * spl + 1e-3,
                    0.7, p["spl_a"], p["spl_p"])
    hu = np.where((sp < 0) & (inner < 0), _col(p["liver_hu"] + p["spleen_dhu"]), hu)
    st = _shape_sdf(yy, xx, 38, 48 + ax * 0.35, 9 * _rising(t, 0.1, 0.55) + 1e-3,
                    8 * _rising(t, 0.1, 0.55) + 1e-3, 0.3)
    hu = np.where((st < 0) & (inner < 0), np.where(yy < 36, -900.0, 15.0), hu)  # stomach
    # liver: patient's right = image left; its size follows the slice height
    prof = _rising(t, 0.25, 0.75)
    cy, cx = 46 + p["ly"], 48 - p["ax"] * 0.42 + p["lx"]
    lv = _shape_sdf(yy, xx, cy, cx, p["ay"] * p["lry"] * prof + 1e-3,
                    p["ax"] * p["lrx"] * prof + 1e-3, p["lang"], p["liv_a"], p["liv_p"])
    liver = (lv < 0) & (inner < -1)
    les = _shape_sdf(yy, xx, cy + p["les_dy"], cx + p["les_dx"], p["les_r"], p["les_r"] * 0.8)
    liv_hu = _col(p["liver_hu"]) + 6 * p["tex2"] - _col(p["les_dhu"]) * _soft(les, 1.0)
    hu = np.where(liver, liv_hu, hu)
    for dx, r, v in ((-4, 3.5, 150.0), (4, 3.0, 200.0)):  # IVC, aorta
        hu = np.where(_shape_sdf(yy, xx, spine_y - 9, 48 + dx, r, r) < 0, v, hu)
    spine = _shape_sdf(yy, xx, spine_y, 48, 6.5, 7.5)
    hu = np.where(spine < 0, 350.0 + 450 * (spine > -1.5), hu)
    hu = _blur(hu, p["blur"]) + noise
    return hu.astype(F32), liver


@synthetic("liver2d", dims=2, default_n=320)
def liver2d(n: int, seed: int) -> SegDataset:
    """LiTS-like contrast-enhanced abdominal CT: 96x96, channels = slices z-1, z, z+1.

    The liver is large with a blurred boundary and its size follows the slice height (tiny
    at the dome and tip); the spleen has liver-like density, bowel loops and muscles sit
    close in intensity, and about half the slices have no liver. Intensities are windowed
    like the real loader (HU -200..250 -> 0..1).
    """
    rng = np.random.default_rng(seed)
    u = lambda lo, hi: rng.uniform(lo, hi, n).astype(F32)  # noqa: E731
    ba, bp = _lobes(rng, n, 2, 0.0, 0.04)
    la, lp = _lobes(rng, n, 3, 0.05, 0.2)
    sa, sp = _lobes(rng, n, 2, 0.0, 0.2)
    field = lambda sigma: _smooth_noise(rng, n, (96, 96), sigma)  # noqa: E731
    p = {"ay": u(29, 35), "ax": u(39, 45), "fat": u(2, 7), "body_a": ba, "body_p": bp,
         "tex": field(2.0), "tex2": field(1.5), "loops": field(3.0) + _col(u(-0.6, 0.4)),
         "gas": field(2.0), "spleen_on": (rng.random(n) < 0.8).astype(F32),
         "spleen_dhu": u(-15, 15), "spl_a": sa, "spl_p": sp, "liver_hu": u(90, 130),
         "ly": u(-4, 4), "lx": u(-3, 3), "lry": u(0.55, 0.8), "lrx": u(0.38, 0.52),
         "lang": u(-0.4, 0.4), "liv_a": la, "liv_p": lp, "les_dy": u(-8, 8), "les_dx": u(-6, 6),
         "les_r": u(2, 6) * (rng.random(n) < 0.35) + 1e-3, "les_dhu": u(40, 70),
         "blur": float(rng.uniform(1.0, 1.6))}
    t = u(0.0, 1.0)
    sigma = _col(u(10, 18))
    chans, masks = [], None
    for dt in (-0.025, 0.0, 0.025):
        noise = _blur(rng.standard_normal((n, 96, 96), dtype=F32), 0.6) * 1.8 * sigma
        hu, liver = _abdomen_slice(p, t + dt, noise)
        chans.append(window(hu, CT_LIVER_WINDOW))
        masks = liver if dt == 0.0 else masks
    images = np.stack(chans, axis=1)
    return SegDataset.create("liver2d", 2, images, masks[:, None].astype(np.uint8), ["liver"],
                             _ids("liver", n), seed=seed,
                             meta={"normalisation": f"CT window {CT_LIVER_WINDOW} HU -> [0, 1]",
                                   "channels": ["z-1", "z", "z+1"], "display_channel": 1})


# --------------------------------------------------------------------------- lung_nodule2d


def _chest(rng: np.random.Generator, n: int):
    """HU image of chest slices with lungs, vessels; returns (hu, lung sdf per side, geom)."""
    yy, xx = _grid2d()
    u = lambda lo, hi: rng.uniform(lo, hi, n).astype(F32)  # noqa: E731
    ay, ax = u(29, 35), u(40, 45)
    body = _shape_sdf(yy, xx, 50, 48, ay, ax)
    hu = np.where(body < 0, -100.0, -1000.0).astype(F32)
    hu = np.where(body + u(2, 5)[:, None, None] < 0,
                  40 + 10 * _smooth_noise(rng, n, (96, 96), 3), hu)
    lungs = []
    for side in (-1, 1):
        a, p = _lobes(rng, n, 3, 0.0, 0.06)
        ly, lx, lry, lrx = 47 + u(-2, 2), 48 + side * ax * u(0.42, 0.48), ay * u(0.62, 0.76), \
            ax * u(0.3, 0.37)
        sdf = _shape_sdf(yy, xx, ly, lx, lry, lrx, side * u(0.0, 0.2), a, p)
        lungs.append((sdf, (ly, lx, lry, lrx)))
    lung = np.minimum(lungs[0][0], lungs[1][0])
    paren = -860 + 25 * _smooth_noise(rng, n, (96, 96), 1.5)
    hu = hu * (1 - _soft(lung, 0.6)) + paren * _soft(lung, 0.6)
    # vessels: thin curvy ridges plus round cross-sections (nodule mimics)
    ridge = np.exp(-(_smooth_noise(rng, n, (96, 96), 3.0) / 0.12) ** 2)
    density = np.clip(_smooth_noise(rng, n, (96, 96), 12.0) * 0.5 + 0.6, 0, 1)
    vessel = ridge * density
    for _ in range(int(rng.integers(15, 35))):
        r = u(0.8, 2.1)
        cy, cx = u(15, 85), u(8, 88)
        vessel = np.maximum(vessel, _soft(_shape_sdf(yy, xx, cy, cx, r, r), 0.5))
    hu = hu + 780 * vessel * _soft(lung + 1.5, 0.6)
    spine = _shape_sdf(yy, xx, 50 + ay * 0.7, 48, 6.0, 7.0)
    hu = np.where(spine < 0, 500.0, hu)
    return hu, lungs


def _nodules(rng: np.random.Generator, hu: np.ndarray, lungs, slots: int = 3):
    """Add 0..slots nodules per image inside the lungs; return (hu, mask)."""
    yy, xx = _grid2d()
    n = hu.shape[0]
    count = rng.choice(slots + 1, n, p=[0.3, 0.4, 0.2, 0.1])
    mask = np.zeros(hu.shape, bool)
    for j in range(slots):
        on = count > j
        side = rng.integers(0, 2, n)
        ly, lx, lry, lrx = (np.where(side == 0, a, b) for a, b in zip(lungs[0][1], lungs[1][1]))
        pleural = rng.random(n) < 0.2
        frac = np.where(pleural, rng.uniform(0.85, 1.0, n), np.sqrt(rng.random(n)) * 0.8)
        phi = rng.uniform(0, 2 * np.pi, n)
        cy, cx = ly + lry * frac * np.sin(phi), lx + lrx * frac * np.cos(phi)
        r = np.exp(rng.uniform(np.log(2.2), np.log(7.0), n)) * on + 1e-3
        a, p = _lobes(rng, n, 2, 0.0, 0.12)
        sdf = _shape_sdf(yy, xx, cy, cx, r, r * rng.uniform(0.8, 1.0, n),
                         rng.uniform(0, np.pi, n), a, p)
        level = np.where(rng.random(n) < 0.25, rng.uniform(-500, -350, n),
                         rng.uniform(0, 50, n)).astype(F32)
        soft = _soft(sdf, 0.7)
        hu = hu * (1 - soft) + _col(level) * soft
        mask |= sdf < 0
    return hu, mask


@synthetic("lung_nodule2d", dims=2, default_n=320)
def lung_nodule2d(n: int, seed: int) -> SegDataset:
    """LIDC-like chest CT slices: 96x96, 1 channel, small nodules in textured lungs.

    Nodules (radius 2-7 px; solid, ground-glass, some touching the pleura) sit among vessel
    cross-sections of similar brightness; about 30% of the slices have none. Windowed like
    the real loader (HU -1000..400 -> 0..1).
    """
    rng = np.random.default_rng(seed)
    hu, lungs = _chest(rng, n)
    hu, mask = _nodules(rng, hu, lungs)
    hu = _blur(hu, 0.6) + 20 * rng.standard_normal(hu.shape, dtype=F32)
    images = window(hu, CT_LUNG_WINDOW)[:, None]
    return SegDataset.create("lung_nodule2d", 2, images, mask[:, None].astype(np.uint8),
                             ["nodule"], _ids("lung", n), seed=seed,
                             meta={"normalisation": f"CT window {CT_LUNG_WINDOW} HU -> [0, 1]"})


# --------------------------------------------------------------------------- lung_nodule3d


def _lung_patches(rng: np.random.Generator, n: int, size: int = SIZE_3D):
    """``n`` lung CT patches (HU) with vessels, optional chest wall and nodules."""
    shape = (size,) * 3
    zz, yy, xx = np.mgrid[0:size, 0:size, 0:size].astype(F32)
    hu = -860 + 30 * _smooth_noise(rng, n, shape, 2.0)
    n1, n2 = _smooth_noise(rng, n, shape, 3.5), _smooth_noise(rng, n, shape, 3.5)
    dens = np.clip(_smooth_noise(rng, n, shape, 10.0) * 0.4 + 0.7, 0.3, 1)
    hu += 800 * np.exp(-(n1**2 + n2**2) / (0.45 * dens) ** 2)
    normal = rng.normal(0, 1, (n, 3)).astype(F32)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    has_wall = rng.random(n) < 0.5
    offset = np.where(has_wall, rng.uniform(0.35, 0.6, n) * size * 0.9, 1e4).astype(F32)
    c = size / 2
    s = ((zz - c) * _col(normal[:, 0], 3) + (yy - c) * _col(normal[:, 1], 3)
         + (xx - c) * _col(normal[:, 2], 3) - _col(offset, 3)
         + 2.5 * _smooth_noise(rng, n, shape, 8.0))
    wall = _soft(-s, 0.8)  # 1 inside the wall (s > 0)
    hu = hu * (1 - wall) + (40 + 10 * _smooth_noise(rng, n, shape, 2.0)) * wall
    hu = np.where(s > 8, -100.0, hu)
    mask = np.zeros((n, *shape), bool)
    count = rng.choice(4, n, p=[0.25, 0.45, 0.2, 0.1])
    for j in range(3):
        r = rng.uniform(2.0, 6.0, n) * (count > j) + 1e-3
        ctr = rng.uniform(10, size - 10, (n, 3)).astype(F32)
        s_c = ((ctr - c) * normal).sum(1) - offset
        push = np.where(s_c > -0.3 * r, s_c + 0.3 * r, 0.0)  # inside the wall: juxtapleural
        ctr -= push[:, None] * normal
        d = np.sqrt((zz - _col(ctr[:, 0], 3)) ** 2 + (yy - _col(ctr[:, 1], 3)) ** 2
                    + (xx - _col(ctr[:, 2], 3)) ** 2) - _col(r, 3)
        level = np.where(rng.random(n) < 0.2, -420.0, rng.uniform(0, 50, n)).astype(F32)
        soft = _soft(d, 0.7)
        hu = hu * (1 - soft) + _col(level, 3) * soft
        mask |= (d < 0) & (s < 0)
    return hu, mask


@synthetic("lung_nodule3d", dims=3, default_n=48)
def lung_nodule3d(n: int, seed: int) -> SegDataset:
    """LUNA16-like 64^3 CT patches, 1 channel: small spherical nodules among vessels.

    Tubular vessels, a chest wall in half the patches (juxtapleural nodules), about 25% of
    the patches without nodules. Windowed like the real loader (HU -1000..400 -> 0..1).
    """
    rng = np.random.default_rng(seed)
    parts = [_lung_patches(rng, min(8, n - i)) for i in range(0, n, 8)]
    hu = np.concatenate([p[0] for p in parts])
    mask = np.concatenate([p[1] for p in parts])
    hu = hu + 20 * rng.standard_normal(hu.shape, dtype=F32)
    images = window(hu, CT_LUNG_WINDOW)[:, None]
    return SegDataset.create("lung_nodule3d", 3, images, mask[:, None].astype(np.uint8),
                             ["nodule"], _ids("lung3d", n), seed=seed,
                             meta={"normalisation": f"CT window {CT_LUNG_WINDOW} HU -> [0, 1]"})
