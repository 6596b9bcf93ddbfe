"""Look inside a trained generator: a UMAP embedding of real and generated images coloured by
ground truth, style mixing, interpolation, and projection of a real slice into W / W+. Library
functions a notebook calls directly; `python -m stylegan2 embed | mix | interpolate | project`
are thin commands over them (stylegan2/cli_explore.py).

    grid = mixing_grid(G, rows=[0, 1], cols=[10, 11], layers=parse_styles("coarse", G))
    frames = interpolation_frames(G, [0, 5, 9], space="z", steps=60)
    result = project(G, read_target("slice.png", G.img_resolution, G.img_channels), D=D, steps=1000)
    emb = embed(G, dataset, get_feature_network("discriminator", ckpt=ck), n=2000)
"""
from .common import ExploreError, publish, seed_ws, synthesize
from .embed import COMPILE_NOTE, Embedding, embed, umap_2d, write_embedding
from .interpolation import (SPACES, frame_times, interpolation_frames, interpolation_ws, save_gif, save_strip,
                            slerp, strip_indices, write_interpolation)
from .labels import LABEL_FIELDS, dataset_labels, split_labels
from .lpips import LPIPS_FILE, LPIPS_URL, LPIPS_WEIGHTS_ENV, lpips_features, lpips_weights_path
from .mixing import STYLE_GROUPS, mix_ws, mixing_grid, parse_styles, style_groups, write_mixing, ws_resolutions
from .projection import Projection, noise_regularization, project, read_target, write_projection

__all__ = [
    "COMPILE_NOTE", "Embedding", "ExploreError", "LABEL_FIELDS", "LPIPS_FILE", "LPIPS_URL", "LPIPS_WEIGHTS_ENV",
    "Projection", "SPACES", "STYLE_GROUPS", "dataset_labels", "embed", "frame_times", "interpolation_frames",
    "interpolation_ws", "lpips_features", "lpips_weights_path", "mix_ws", "mixing_grid", "noise_regularization",
    "parse_styles", "project", "publish", "read_target", "save_gif", "save_strip", "seed_ws", "slerp",
    "split_labels", "strip_indices", "style_groups", "synthesize", "umap_2d", "write_embedding", "write_interpolation",
    "write_mixing", "write_projection", "ws_resolutions",
]
