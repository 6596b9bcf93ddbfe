"""One UMAP embedding (McInnes et al. 2018, umap-learn) of real and generated images, seen
through a fixed feature network, and a second of the generated images' W latents; coloured by
ground truth and marked real vs generated.

    result = embed(G, dataset, net, n=2000, labels=("slice band", names), seed=0)
    write_embedding(result, "out/")     # embed.png, embed.csv, embed.json

umap-learn compiles its functions with numba the first time they run in a process (30-90 s on
a small CPU); the command says so before it starts.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .. import fileio
from ..metrics.features import FeatureNetwork, extract_features
from ..sampling import seed_latents
from .common import ExploreError, model_device, publish

REAL, GENERATED = "real", "generated"
UNLABELED = ""
COMPILE_NOTE = "UMAP: umap-learn compiles its code with numba on the first call in a process (30-90 s on a small CPU)"


@dataclass
class Embedding:
    """The embedded points, row i being one image.

    source: 'real' or 'generated' per row. index: the dataset index (real) or seed (generated).
    label: the ground-truth label string ('' where there is none). xy: [N, 2] UMAP of the
    features. w_xy: [N, 2] UMAP of w (NaN for real images). params: UMAP's parameters, the
    feature network and the label field, as written to the JSON.
    """

    source: list[str]
    index: list[int]
    label: list[str]
    xy: np.ndarray
    w_xy: np.ndarray
    label_title: str
    params: dict[str, Any] = field(default_factory=dict)


def umap_2d(x: np.ndarray, *, n_neighbors: int, min_dist: float, seed: int) -> np.ndarray:
    """[N, D] -> [N, 2]: umap-learn on standardised columns (features of very different scales
    would otherwise let a few dominate the distances), seeded, so the result is reproducible
    (umap then runs single-threaded)."""
    import umap  # imported here: it takes seconds, and only this command needs it

    x = np.asarray(x, dtype=np.float64)
    std = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(x) - 1), min_dist=min_dist,
                        random_state=seed, metric="euclidean", n_jobs=1)
    return np.asarray(reducer.fit_transform(x.astype(np.float32)), dtype=np.float64)


@torch.no_grad()
def generate_for_embedding(G: nn.Module, n: int, *, net: Optional[FeatureNetwork] = None, seed: int = 0,
                           batch: int = 32, truncation_psi: float = 1.0,
                           progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, Optional[np.ndarray]]:
    """n fakes of seeds seed..seed+n-1: (images float32 [n, C, R, R] on the CPU, or with `net`
    their features float64 [n, dim], each batch's images dropped once seen, so 2000 fakes at
    256x256 never sit in memory together; w [n, w_dim]; the class index per fake for a
    conditional G (drawn uniformly by a generator seeded with `seed`), else None)."""
    dev = model_device(G)
    seeds = list(range(seed, seed + n))
    classes = None
    if G.c_dim > 0:
        classes = torch.randint(0, G.c_dim, (n,), generator=torch.Generator().manual_seed(seed)).numpy()
    images, ws = [], []
    for i in tqdm(range(0, n, batch), desc="generated images", unit="batch", disable=not progress, leave=False):
        z = seed_latents(seeds[i:i + batch], G.z_dim, dev)
        c = None
        if classes is not None:
            c = torch.nn.functional.one_hot(torch.from_numpy(classes[i:i + batch]), G.c_dim).float().to(dev)
        w = G.mapping(z, c, truncation_psi=truncation_psi)
        img = G.synthesis(w, noise_mode="const", force_fp32=dev.type != "cuda")
        images.append(img.float().cpu() if net is None else net(img).double().cpu())
        ws.append(w[:, 0].float().cpu())
    return torch.cat(images), torch.cat(ws), classes


def embed(G: nn.Module, dataset: Any, net: FeatureNetwork, *, n: int = 2000, labels: Optional[Sequence[str]] = None,
          label_title: str = "none", class_names: Sequence[str] = (), seed: int = 0, batch: int = 32,
          n_neighbors: int = 15, min_dist: float = 0.1, truncation_psi: float = 1.0,
          progress: bool = False) -> Embedding:
    """Embed min(n, len(dataset)) real images (a subset seeded with `seed`) and n fakes.

    labels: one string per image of `dataset` (labels.dataset_labels), or None. class_names:
    the generator's class names, for a conditional G's fakes (they carry the class they were
    generated for); unconditional fakes are unlabeled. Raises ExploreError for fewer than 4
    points in an embedding (UMAP needs neighbours).
    """
    n_real = min(n, len(dataset))
    if n_real + n < 4 or n < 2:
        raise ExploreError(f"embedding needs at least 2 generated images and 4 points in all, got {n} "
                           f"generated and {n_real} real")
    if labels is not None and len(labels) != len(dataset):
        raise ExploreError(f"labels: {len(labels)} for {len(dataset)} images")
    rng = np.random.default_rng(seed)
    real_idx = np.sort(rng.choice(len(dataset), size=n_real, replace=False))
    real = torch.from_numpy(dataset.images[real_idx])
    real_feats = extract_features(net, real, batch=batch, progress=progress, desc="real features")
    fake_feats, w, classes = generate_for_embedding(G, n, net=net, seed=seed, batch=batch,
                                                    truncation_psi=truncation_psi, progress=progress)
    fake_feats = fake_feats.numpy()
    xy = umap_2d(np.concatenate([real_feats, fake_feats]), n_neighbors=n_neighbors, min_dist=min_dist, seed=seed)
    w_xy = np.full((n_real + n, 2), np.nan)
    w_xy[n_real:] = umap_2d(w.numpy(), n_neighbors=n_neighbors, min_dist=min_dist, seed=seed)

    real_labels = [labels[i] for i in real_idx] if labels is not None else [UNLABELED] * n_real
    if classes is not None:
        names = list(class_names) or [str(i) for i in range(G.c_dim)]
        fake_labels = [str(names[k]) if k < len(names) else str(k) for k in classes]
    else:
        fake_labels = [UNLABELED] * n
    params = {"umap": {"n_components": 2, "n_neighbors": min(n_neighbors, n_real + n - 1), "min_dist": min_dist,
                       "metric": "euclidean", "random_state": seed, "standardised": True,
                       "umap_learn_version": _umap_version()},
              "w_umap": {"n_neighbors": min(n_neighbors, n - 1)},
              "feature_network": net.name, "feature_network_key": net.key, "feature_dim": int(real_feats.shape[1]),
              "num_real": n_real, "num_generated": n, "seed": seed, "truncation_psi": truncation_psi,
              "label_field": label_title, "generated_labels": "class generated for" if classes is not None else "none"}
    return Embedding(source=[REAL] * n_real + [GENERATED] * n,
                     index=[int(i) for i in real_idx] + list(range(seed, seed + n)),
                     label=real_labels + fake_labels, xy=xy, w_xy=w_xy, label_title=label_title, params=params)


def _umap_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("umap-learn")
    except PackageNotFoundError:
        return "unknown"


def _csv_text(e: Embedding) -> str:
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["source", "index", "label", "x", "y", "w_x", "w_y"])
    for i in range(len(e.source)):
        w = ["" if np.isnan(v) else f"{v:.6g}" for v in e.w_xy[i]]
        out.writerow([e.source[i], e.index[i], e.label[i], f"{e.xy[i, 0]:.6g}", f"{e.xy[i, 1]:.6g}", *w])
    return buf.getvalue()


def plot_embedding(e: Embedding, path: Path, title: str = "") -> None:
    """Two panels: the features of real (circles) and generated (triangles) images, coloured by
    label; the W latents of the generated ones, coloured by their class (grey when unlabeled)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({lab for lab in e.label if lab != UNLABELED})
    palette = plt.get_cmap("tab10")
    colour = {lab: palette(i % 10) for i, lab in enumerate(names)}
    colour[UNLABELED] = (0.55, 0.55, 0.55, 1.0)
    src = np.asarray(e.source)
    lab = np.asarray(e.label, dtype=object)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6))
    panels = ((axes[0], e.xy, (REAL, GENERATED), f"image features ({e.params['feature_network']})"),
              (axes[1], e.w_xy, (GENERATED,), "W latents of the generated images"))
    for ax, xy, sources, heading in panels:
        for s, marker in ((REAL, "o"), (GENERATED, "^")):
            if s not in sources:
                continue
            for name in [*names, UNLABELED]:
                sel = (src == s) & (lab == name)
                if sel.any():
                    text = f"{s}" + (f", {name}" if name != UNLABELED else "")
                    ax.scatter(xy[sel, 0], xy[sel, 1], s=10, marker=marker, color=colour[name], alpha=0.7,
                               linewidths=0, label=text)
        ax.set_title(heading)
        ax.set_xticks([])
        ax.set_yticks([])
        shown = np.isin(src, sources) & (lab != UNLABELED)
        ax.legend(fontsize=8, markerscale=1.5, loc="best", title=e.label_title if shown.any() else None)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        fileio.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)


def write_embedding(e: Embedding, folder: str | Path, title: str = "") -> dict[str, Path]:
    """embed.png, embed.csv (one row per image: source, index, label, x, y, w_x, w_y) and
    embed.json (UMAP parameters, feature network, counts) in `folder`, all or none."""
    doc = json.dumps(e.params, indent=2) + "\n"
    return publish(folder, {
        "embed.png": lambda p: plot_embedding(e, p, title),
        "embed.csv": lambda p: fileio.atomic_write_text(p, _csv_text(e)),
        "embed.json": lambda p: fileio.atomic_write_text(p, doc),
    })
