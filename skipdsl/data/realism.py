"""How close two image sets are: KID (Kernel Inception Distance, Binkowski et al. 2018) between
a built-in synthetic dataset and the real copy of its counterpart, or between two splits or two
seeds of one dataset (a shift check). ``bench datasets compare A B``.

A set is named ``NAME[:SPLIT][@SEED]``: a dataset (:func:`skipdsl.data.load_dataset`), an
optional split (``train``, ``val``, ``test``; default: every image of a set of ``n``
generated without a separate test set) and an optional data seed (default 0): ``nuclei2d``,
``nuclei2d@1``, ``liver2d:test``, ``dsb2018`` (under ``--data-root``).

Images become 3-channel uint8 the same way for every set: 3D volumes give their central axial
slice; 1 channel is repeated, 2 channels get their mean as the third, more than 3 keep the
first three; each set is scaled per channel from its own 0.5th-99.5th percentiles to 0..255
(a real set in Hounsfield units and a synthetic one in 0..1 are put on one scale; what remains
is texture, shape and contrast).

Features (nothing is downloaded, ever):
- ``inception:PATH``: torch-fidelity's ``inception-v3-compat`` with the local weights file
  PATH (``pt_inception-2015-12-05-6726825d.pth``); KID as published.
- ``checkpoint:PATH``: the encoder of a trained skipdsl model (a trial folder or its
  ``model.pt``, :func:`skipdsl.checkpoint.load_checkpoint`): global average and max pooling of
  every encoder node ``x_i_0``, concatenated; images z-scored per image and channel, channels
  repeated or cut to the network's.
- ``random`` (the default): a fixed random-feature extractor, four stride-2 3x3 convolutions
  with ReLU (32-64-128-256 channels, He-normal weights from seed 0) on 96x96 inputs, global
  average and max pooling of the last three stages (896 features). Random convolutional
  features separate texture and shape statistics well enough to rank set distances; their
  KID values are not comparable with Inception KIDs.
The custom extractors are registered with torch-fidelity (``skipdsl-random``,
``skipdsl-encoder``), which computes KID (``calculate_metrics(kid=True)``). Where torch-fidelity
does not import (it needs torchvision), the same estimator runs here instead: torch-fidelity's
``kid_features_to_metric`` (unbiased MMD^2 with the polynomial kernel (x.y/d + 1)^3, 100
subsets of min(1000, n/2) samples, rng seed 2020); the report names which one ran.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["ImageSet", "parse_set", "load_set", "to_uint8_rgb", "extract", "kid",
           "compare", "KID_DEFAULTS"]

#: torch-fidelity's KID defaults (torch_fidelity.defaults), used by both backends.
KID_DEFAULTS = {"kid_subsets": 100, "kid_subset_size": 1000, "kid_kernel": "poly",
                "kid_kernel_poly_degree": 3, "kid_kernel_poly_gamma": None,
                "kid_kernel_poly_coef0": 1, "rng_seed": 2020}

RANDOM_SIZE = 96
RANDOM_CHANNELS = (32, 64, 128, 256)


@dataclass
class ImageSet:
    """One named set: ``label`` as written, its uint8 ``(N, 3, H, W)`` ``images``."""

    label: str
    name: str
    split: str | None
    seed: int
    images: np.ndarray


def parse_set(text: str) -> tuple[str, str | None, int]:
    """``NAME[:SPLIT][@SEED]`` -> (name, split or None, seed). A family member's own colon
    (``nnunet:Dataset004_Hippocampus``) is kept when what follows is not a split name."""
    seed = 0
    if "@" in text:
        text, s = text.rsplit("@", 1)
        seed = int(s)
    split = None
    head, _, tail = text.rpartition(":")
    if head and tail in ("train", "val", "test"):
        text, split = head, tail
    return text, split, seed


def to_uint8_rgb(images: np.ndarray) -> np.ndarray:
    """``(N, C, *spatial)`` float images -> ``(N, 3, H, W)`` uint8 (see the module doc)."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 5:  # 3D: the central axial slice
        x = x[:, :, x.shape[2] // 2]
    c = x.shape[1]
    if c == 1:
        x = np.repeat(x, 3, axis=1)
    elif c == 2:
        x = np.concatenate([x, x.mean(axis=1, keepdims=True)], axis=1)
    else:
        x = x[:, :3]
    lo = np.percentile(x, 0.5, axis=(0, 2, 3), keepdims=True)
    hi = np.percentile(x, 99.5, axis=(0, 2, 3), keepdims=True)
    x = (x - lo) / np.maximum(hi - lo, 1e-8)
    return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


def load_set(text: str, *, n: int = 100, root: str | Path | None = None,
             cache_dir: Any = None) -> ImageSet:
    """The images of set ``text`` (``NAME[:SPLIT][@SEED]``), at most ``n``."""
    from . import load_dataset

    name, split, seed = parse_set(text)
    kw = {} if split else {"test_n": 0}
    ds = load_dataset(name, root=root, seed=seed, n=n, cache_dir=cache_dir, **kw)
    idx = ds.splits[split] if split else np.arange(len(ds.images))
    return ImageSet(text, name, split, seed, to_uint8_rgb(ds.images[idx[:n]]))


# --------------------------------------------------------------------------- extractors


def _random_net():
    """The fixed random-feature network (seed 0, He-normal, no bias)."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(0)
    layers, cin = [], 3
    for cout in RANDOM_CHANNELS:
        conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
        with torch.no_grad():
            conv.weight.normal_(0.0, math.sqrt(2.0 / (cin * 9)), generator=gen)
        layers.append(nn.Sequential(conv, nn.ReLU()))
        cin = cout
    return nn.ModuleList(layers)


def _random_features(stages, x):
    import torch
    import torch.nn.functional as F

    x = F.interpolate(x.float() / 255.0, size=(RANDOM_SIZE, RANDOM_SIZE), mode="bilinear",
                      align_corners=False)
    x = (x - 0.5) / 0.25
    feats = []
    for i, stage in enumerate(stages):
        x = stage(x)
        if i >= 1:
            feats += [x.mean(dim=(2, 3)), x.amax(dim=(2, 3))]
    return torch.cat(feats, dim=1)


class _Encoder:
    """A skipdsl checkpoint's encoder: pooled outputs of every ``x_i_0`` (forward hooks)."""

    def __init__(self, path: str | Path) -> None:
        from skipdsl.checkpoint import load_checkpoint

        ck = load_checkpoint(path)  # the format of skipdsl/checkpoint.py, checked
        if ck.dims != 2:
            raise ValueError(f"checkpoint {path}: a {ck.dims}D network; the realism check "
                             "compares 2D images (3D volumes by their central slice)")
        self.model, self.in_channels = ck.model.eval(), ck.in_channels
        self.outs: dict[str, Any] = {}
        self.nodes = [f"x_{i}_0" for i in range(ck.spec.depth)]
        for node in self.nodes:
            self.model.get_submodule(node).register_forward_hook(
                lambda m, i, o, node=node: self.outs.__setitem__(node, o))

    def __call__(self, x):
        import torch

        x = x.float() / 255.0
        c = self.in_channels
        x = x[:, :c] if c <= 3 else torch.cat([x, x[:, :1].expand(-1, c - 3, -1, -1)], 1)
        x = (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)
        self.model(x)
        return torch.cat([f(self.outs[nd]) for nd in self.nodes
                          for f in (lambda t: t.mean(dim=(2, 3)), lambda t: t.amax(dim=(2, 3)))],
                         dim=1)


def _extractor(kind: str):
    """(callable uint8 batch -> features, description) for ``random`` / ``checkpoint:PATH``."""
    if kind == "random":
        net = _random_net()
        return (lambda x: _random_features(net, x),
                "fixed random-feature extractor (skipdsl-random: 4 stride-2 3x3 convolutions, "
                "32-64-128-256 channels, He-normal seed 0, avg+max pooling, 896 features)")
    if kind.startswith("checkpoint:"):
        path = kind.split(":", 1)[1]
        enc = _Encoder(path)
        return enc, f"encoder of skipdsl checkpoint {path} (skipdsl-encoder: avg+max pooled x_i_0)"
    raise ValueError(f"unknown feature extractor '{kind}'; valid: random, checkpoint:PATH, "
                     "inception:PATH (a local Inception weights file)")


def extract(images: np.ndarray, kind: str = "random", batch: int = 32):
    """Features ``(N, D)`` (float64 torch tensor) of uint8 ``(N, 3, H, W)`` images."""
    import torch

    fn, _ = _extractor(kind)
    with torch.no_grad():
        return torch.cat([fn(torch.from_numpy(images[b:b + batch]))
                          for b in range(0, len(images), batch)]).double()


# --------------------------------------------------------------------------- KID


def _fidelity():
    """torch_fidelity, or the reason it does not import."""
    try:
        import torch_fidelity

        return torch_fidelity, ""
    except Exception as err:  # it imports torchvision at the top
        return None, f"{type(err).__name__}: {err}"


def _subset_size(n1: int, n2: int) -> int:
    """torch-fidelity's 1000, or half the smaller set (so that the subsets differ and the std
    says something)."""
    return min(KID_DEFAULTS["kid_subset_size"], max(2, min(n1, n2) // 2))


def kid_from_features(f1, f2, **kwargs) -> dict[str, float]:
    """KID mean and std from two feature matrices, torch-fidelity's estimator
    (``kid_features_to_metric``): where torch-fidelity imports, it is called."""
    opts = {**KID_DEFAULTS, **kwargs}
    opts["kid_subset_size"] = _subset_size(len(f1), len(f2))
    tf, _ = _fidelity()
    if tf is not None:
        from torch_fidelity.metric_kid import kid_features_to_metric

        out = kid_features_to_metric(f1, f2, verbose=False, **opts)
        return {"kid": out["kernel_inception_distance_mean"],
                "kid_std": out["kernel_inception_distance_std"]}
    x, y = f1.cpu().numpy(), f2.cpu().numpy()
    m, d = opts["kid_subset_size"], x.shape[1]
    gamma = opts["kid_kernel_poly_gamma"] or 1.0 / d
    rng = np.random.RandomState(opts["rng_seed"])
    mmds = np.zeros(opts["kid_subsets"])
    for i in range(len(mmds)):
        a = x[rng.choice(len(x), m, replace=False)]
        b = y[rng.choice(len(y), m, replace=False)]
        k = [(p @ q.T * gamma + opts["kid_kernel_poly_coef0"]) ** opts["kid_kernel_poly_degree"]
             for p, q in ((a, a), (b, b), (a, b))]
        within = (k[0].sum() - np.trace(k[0]) + k[1].sum() - np.trace(k[1])) / (m * (m - 1))
        mmds[i] = within - 2 * k[2].sum() / (m * m)
    return {"kid": float(mmds.mean()), "kid_std": float(mmds.std())}


def _register(tf) -> None:
    """Register the custom extractors with torch-fidelity (once)."""
    import torch
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    def make(name: str, kind_of):
        class Extractor(tf.FeatureExtractorBase):
            def __init__(self, name, features_list, **kwargs):
                super().__init__(name, features_list)
                self.fn, _ = _extractor(kind_of(kwargs))

            @staticmethod
            def get_provided_features_list():
                return ("features",)

            @staticmethod
            def get_default_feature_layer_for_metric(metric):
                return "features"

            @staticmethod
            def can_be_compiled():
                return False

            @staticmethod
            def get_dummy_input_for_compile():
                return torch.zeros(1, 3, RANDOM_SIZE, RANDOM_SIZE, dtype=torch.uint8)

            def forward(self, x):
                return (self.fn(x).double(),)

        Extractor.__name__ = f"Extractor_{name.replace('-', '_')}"
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            tf.register_feature_extractor(name, Extractor)

    make("skipdsl-random", lambda kw: "random")
    make("skipdsl-encoder", lambda kw: f"checkpoint:{kw['feature_extractor_weights_path']}")


def _uint8_set(images: np.ndarray):
    """A torch Dataset of uint8 (3, H, W) tensors, as torch-fidelity reads its inputs."""
    import torch
    from torch.utils.data import Dataset

    class Uint8Set(Dataset):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i):
            return torch.from_numpy(np.ascontiguousarray(images[i]))

    return Uint8Set()


def kid(a: np.ndarray, b: np.ndarray, extractor: str = "random") -> dict[str, Any]:
    """KID between two uint8 ``(N, 3, H, W)`` sets: ``kid``, ``kid_std``, ``extractor`` (what
    the features were), ``backend`` (torch-fidelity, or this module's copy and why)."""
    tf, why = _fidelity()
    if extractor.startswith("inception:"):
        path = extractor.split(":", 1)[1]
        if tf is None:
            raise ValueError(f"inception:{path} needs torch-fidelity, which does not import "
                             f"here ({why}); use --extractor random or checkpoint:PATH")
        if not Path(path).is_file():
            raise FileNotFoundError(f"no Inception weights file '{path}' (nothing is downloaded)")
        fe, layer, kw = "inception-v3-compat", "2048", {"feature_extractor_weights_path": path}
        desc = f"torch-fidelity inception-v3-compat, local weights {path}"
    else:
        desc = _extractor(extractor)[1]
        if tf is None:
            return {**kid_from_features(extract(a, extractor), extract(b, extractor)),
                    "extractor": desc,
                    "backend": f"skipdsl copy of torch-fidelity's KID estimator ({why})"}
        _register(tf)
        fe, layer, kw = "skipdsl-random", "features", {}
        if extractor.startswith("checkpoint:"):
            fe, kw = "skipdsl-encoder", {"feature_extractor_weights_path": extractor[11:]}
    m = tf.calculate_metrics(
        input1=_uint8_set(a), input2=_uint8_set(b), kid=True, feature_extractor=fe,
        feature_layer_kid=layer, cuda=False, cache=False, save_cpu_ram=True, verbose=False,
        kid_subset_size=_subset_size(len(a), len(b)), batch_size=32,
        **kw)
    return {"kid": m["kernel_inception_distance_mean"],
            "kid_std": m["kernel_inception_distance_std"], "extractor": desc,
            "backend": f"torch-fidelity {tf.__version__} (calculate_metrics, kid)"}


# --------------------------------------------------------------------------- report


def _picture(sets: Sequence[ImageSet], path: Path, k: int = 6) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(sets), k, figsize=(1.6 * k, 1.7 * len(sets)), squeeze=False)
    for r, s in enumerate(sets):
        for c in range(k):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(s.images):
                ax.imshow(np.transpose(s.images[c], (1, 2, 0)))
        axes[r][0].set_title(s.label, fontsize=8, loc="left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def compare(a: str, others: Sequence[str] | str, out: str | Path, *, n: int = 100,
            root: str | Path | None = None, extractor: str = "random",
            cache_dir: Any = None) -> dict[str, Any]:
    """KID of set ``a`` against each of ``others``; writes ``OUT/realism.md`` (a table, the
    extractor and backend, the preprocessing) and ``OUT/realism.png`` (``a`` and each other set
    side by side, one row each). Returns ``{"rows": [...], "markdown": path, "picture": path}``.
    """
    others = [o for o in (others.split(",") if isinstance(others, str) else others) if o]
    out = Path(out)
    ref = load_set(a, n=n, root=root, cache_dir=cache_dir)
    sets, rows = [ref], []
    for o in others:
        s = load_set(o, n=n, root=root, cache_dir=cache_dir)
        sets.append(s)
        rows.append({"a": a, "b": o, "n_a": len(ref.images), "n_b": len(s.images),
                     **kid(ref.images, s.images, extractor)})
    extr = {r["extractor"] for r in rows}
    back = {r["backend"] for r in rows}
    md = ["# Dataset realism: KID", "",
          "| A | B | n A | n B | KID | ± std |", "|---|---|---|---|---|---|"]
    md += [f"| {r['a']} | {r['b']} | {r['n_a']} | {r['n_b']} | {r['kid']:.4g} | "
           f"{r['kid_std']:.2g} |" for r in rows]
    md += ["", f"Features: {'; '.join(sorted(extr))}.", f"KID computed by: {'; '.join(sorted(back))}.",
           f"KID: unbiased MMD² with the polynomial kernel (x·y/d + 1)³, "
           f"{KID_DEFAULTS['kid_subsets']} subsets of min(1000, n/2) images. Lower is closer; "
           "values from different extractors are not comparable.",
           "Images: central axial slice of 3D volumes, 3 channels (1: repeated, 2: + their mean, "
           ">3: the first three), each set scaled per channel from its 0.5-99.5th percentiles "
           "to 0..255.", "", "![side by side](realism.png)", ""]
    pic = _picture(sets, out / "realism.png")
    path = out / "realism.md"
    path.write_text("\n".join(md))
    return {"rows": rows, "markdown": path, "picture": pic}

