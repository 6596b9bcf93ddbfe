"""Look inside a model: `embed | mix | interpolate | project` and `generate --ws`, end to end
through click's CliRunner on a tiny checkpoint the tests make, plus the pieces whose meaning can
be checked against an independent computation (slerp, layer groups, noise penalty, labels)."""
from __future__ import annotations

import csv
import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image

from stylegan2 import cli
from stylegan2.data import open_dataset
from stylegan2.explore import (ExploreError, dataset_labels, frame_times, strip_indices, mix_ws, noise_regularization,
                               parse_styles, seed_ws, slerp, style_groups, synthesize, ws_resolutions)
from stylegan2.metrics import INCEPTION_WEIGHTS_ENV
from stylegan2.networks import Generator
from stylegan2.networks.config import ModelConfig
from stylegan2.training import checkpoint, state
from stylegan2.training.config import make_config
from stylegan2.training.state import model_config_dict

from helpers import ellipse_slices, untrained_run, write_pngs

SCALE = 4  # save_grid and the GIF enlarge 16x16 images to 64x64
PAD = 2


def write_adni(root: Path, per_folder: int, seed: int = 0) -> Path:
    """An ADNI AD_NC layout (train/test x AD/NC) of 16x16 grayscale ellipses: AD ones darker."""
    g = np.random.default_rng(seed)
    for split in ("train", "test"):
        for k, cls in enumerate(("AD", "NC")):
            write_pngs(root / split / cls, ellipse_slices(g, per_folder, base=80 + 80 * k, scale=60), f"{cls}_{split}_")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with one untrained tiny checkpoint whose data is an ADNI layout; its w_avg is
    set to the mean mapped w (an untrained run has zeros there), so projection starts sensibly."""
    root = tmp_path_factory.mktemp("explore")

    @torch.no_grad()
    def mean_w_avg(r) -> None:
        for net in (r.G, r.G_ema):
            z = torch.randn(2000, net.z_dim, generator=torch.Generator().manual_seed(1))
            net.mapping.w_avg.copy_(net.mapping(z, None)[:, 0].mean(0))
    return untrained_run(root, write_adni(root / "AD_NC", 5), "00000-AD_NC-tiny", prepare=mean_w_avg)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STYLEGAN2_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    monkeypatch.delenv("STYLEGAN2_LPIPS_WEIGHTS", raising=False)


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def cell(grid: np.ndarray, r: int, c: int, size: int = 16 * SCALE) -> np.ndarray:
    """Image (r, c) of a save_grid canvas, back at the model's size."""
    y, x = r * (size + PAD), c * (size + PAD)
    return grid[y:y + size:SCALE, x:x + size:SCALE]


def generated(run: Path, tmp_path: Path, seeds: str) -> dict[int, np.ndarray]:
    """`generate --batch 1` images by seed (one at a time, as the explore tools draw)."""
    out = tmp_path / f"gen-{seeds.replace(',', '_')}"
    r = invoke("generate", "--ckpt", run, "--out", out, "--seeds", seeds, "--batch", 1, "--no-progress")
    assert r.exit_code == 0, r.output
    return {int(p.stem[4:]): png(p) for p in out.glob("seed*.png")}


def tiny_generator(resolution: int = 16) -> Generator:
    cfg, _ = make_config("tiny", {"resolution": resolution})
    torch.manual_seed(0)
    return Generator(ModelConfig.from_dict(model_config_dict(cfg, 0))).eval().requires_grad_(False)


def one_line_error(r: Result, *words: str) -> None:
    assert r.exit_code != 0
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Error") and "Traceback" not in r.output, r.output
    text = " ".join(lines).lower()
    for w in words:
        assert w.lower() in text, r.output


# --------------------------------------------------------------------------------------------
# Pieces.

def test_slerp_keeps_the_endpoints_and_follows_the_great_circle():
    g = torch.Generator().manual_seed(0)
    for dim in (2, 7, 128):
        a, b = torch.randn(dim, generator=g, dtype=torch.float64), torch.randn(dim, generator=g, dtype=torch.float64)
        assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
        theta = math.acos(float(a @ b / a.norm() / b.norm()))
        for t in (0.25, 0.5, 0.9):
            s = slerp(a, b, t)
            # The angle to a grows linearly with t, and the norm interpolates linearly.
            got = math.acos(min(1.0, float(s @ a / s.norm() / a.norm())))
            assert got == pytest.approx(t * theta, rel=1e-6, abs=1e-9)
            assert float(s.norm()) == pytest.approx((1 - t) * float(a.norm()) + t * float(b.norm()), rel=1e-9)
    assert frame_times(3, 4, loop=False)[-1] == (1, 1.0) and len(frame_times(3, 4, loop=False)) == 9
    assert len(frame_times(3, 4, loop=True)) == 12
    assert strip_indices(3, 4, False, 2) == [0, 2, 4, 6, 8] and strip_indices(3, 4, True, 2) == [0, 2, 4, 6, 8, 10]
    assert strip_indices(2, 3, False, 10) == [0, 1, 2, 3] and strip_indices(2, 60, False, 1) == [0, 60]


def test_layer_groups_follow_the_resolution_each_w_feeds():
    for res, expect_groups in ((16, (3, 0, 3)), (32, (3, 2, 3)), (64, (3, 4, 3)), (128, (3, 4, 5))):
        G = tiny_generator(res)
        rs = ws_resolutions(G)
        # Independent: w 0 feeds the 4x4 conv; then two per resolution; the last only the top ToRGB.
        expected = [4] + [4 * 2 ** ((k + 1) // 2) for k in range(1, G.num_ws - 1)] + [res]
        assert rs == expected
        groups = style_groups(G)
        assert tuple(len(groups[k]) for k in ("coarse", "middle", "fine")) == expect_groups
        assert sorted(sum(groups.values(), [])) == list(range(G.num_ws))
    G = tiny_generator(16)
    assert parse_styles("0-2,5", G) == [0, 1, 2, 5]
    for bad, words in (("6", "out of range"), ("middle", "no 'middle'"), ("a-b", "neither")):
        with pytest.raises(ExploreError, match=words):
            parse_styles(bad, G)


def test_mix_ws_takes_the_given_layers_from_the_column():
    g = torch.Generator().manual_seed(0)
    rows, cols = torch.randn(3, 6, 4, generator=g), torch.randn(2, 6, 4, generator=g)
    mixed = mix_ws(rows, cols, [1, 4]).reshape(3, 2, 6, 4)
    for r in range(3):
        for c in range(2):
            for k in range(6):
                assert torch.equal(mixed[r, c, k], (cols if k in (1, 4) else rows)[c if k in (1, 4) else r, k])


def test_noise_penalty_is_small_for_white_noise_and_large_for_structure():
    g = torch.Generator().manual_seed(0)
    white = [torch.randn(32, 32, generator=g), torch.randn(8, 8, generator=g)]
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    smooth = torch.sin(xx / 5) * torch.cos(yy / 7)
    smooth = (smooth - smooth.mean()) / smooth.std()
    # Independent: level 0 of a map is mean(x * x shifted right)^2 + mean(x * x shifted down)^2.
    x = white[1]
    own = float((x * torch.roll(x, 1, 1)).mean() ** 2 + (x * torch.roll(x, 1, 0)).mean() ** 2)
    assert float(noise_regularization([white[1]])) == pytest.approx(own, rel=1e-5)
    # White noise: each mean of M products is about N(0, 1/M), so its square is about 1/M; smooth
    # structure correlates with its shift (about 1 per term, at every level).
    assert float(noise_regularization(white)) < 0.1 and float(noise_regularization([smooth])) > 1


def test_labels_by_class_and_by_split(run: Path, tmp_path: Path):
    spec = str(run.parent / "AD_NC")
    ds = open_dataset(spec, 16, 1, cache_dir=str(tmp_path / "c"), progress=False)
    title, labels = dataset_labels(ds, spec, "class")
    assert title == "diagnosis" and labels == [ds.label_names[k] for k in ds.labels]
    assert sorted(set(labels)) == ["AD", "NC"]
    title, splits = dataset_labels(ds, spec, "split")
    # The loader reads train before test (5 AD + 5 NC each).
    assert title == "split" and splits == ["train"] * 10 + ["test"] * 10
    sub = open_dataset(spec, 16, 1, cache_dir=str(tmp_path / "c"), progress=False, max_images=7)
    _, sub_splits = dataset_labels(sub, spec, "split", max_images=7)
    pixels = {ds.images[i].tobytes(): s for i, s in enumerate(splits)}
    assert sub_splits == [pixels[img.tobytes()] for img in sub.images]
    with pytest.raises(ExploreError, match="no splits"):
        dataset_labels(ds, "mni152", "split")


# --------------------------------------------------------------------------------------------
# Commands.

def test_mix_cells_take_the_column_layers_and_equal_sources_are_exact(run: Path, tmp_path: Path):
    out = tmp_path / "mix"
    r = invoke("mix", "--ckpt", run, "--rows", "0-2", "--cols", "0,1,5", "--styles", "fine", "--out", out,
               "--no-progress")
    assert r.exit_code == 0, r.output
    grid = png(out / "mix-fine.png")
    assert grid.shape == (4 * 64 + 3 * PAD, 4 * 64 + 3 * PAD)
    gen = generated(run, tmp_path, "0,1,2,5")
    assert (cell(grid, 0, 0) == 0).all()
    for c, seed in enumerate((0, 1, 5), start=1):
        assert np.array_equal(cell(grid, 0, c), gen[seed])
    for r_, seed in enumerate((0, 1, 2), start=1):
        assert np.array_equal(cell(grid, r_, 0), gen[seed])
    # A row seed mixed with itself is its own image, exactly; other cells are new images.
    assert np.array_equal(cell(grid, 1, 1), gen[0]) and np.array_equal(cell(grid, 2, 2), gen[1])
    mixed = cell(grid, 3, 3).astype(int)
    assert np.abs(mixed - gen[2]).mean() > 0.5 and np.abs(mixed - gen[5]).mean() > 0.5


def test_interpolation_ends_are_the_generated_seeds(run: Path, tmp_path: Path):
    gen = generated(run, tmp_path, "0,3,7")
    for space in ("z", "w"):
        out = tmp_path / f"interp-{space}"
        r = invoke("interpolate", "--ckpt", run, "--seeds", "0,3,7", "--space", space, "--steps", 4, "--strip", 2,
                   "--out", out, "--no-progress")
        assert r.exit_code == 0, r.output
        gif = Image.open(out / f"interpolate-{space}-0_3_7.gif")
        frames = []
        for i in range(gif.n_frames):
            gif.seek(i)
            frames.append(np.asarray(gif.convert("L"))[::SCALE, ::SCALE])
        assert len(frames) == 2 * 4 + 1
        assert np.array_equal(frames[0], gen[0]) and np.array_equal(frames[4], gen[3])
        assert np.array_equal(frames[-1], gen[7])
        assert np.abs(frames[2].astype(int) - gen[0]).mean() > 0.5  # between seeds: a new image
        strip = png(out / f"interpolate-{space}-0_3_7.png")
        assert strip.shape == (64, 5 * 64 + 4 * PAD)
        # Frames 0, 2, 4, 6, 8: the seeds at 0, 4 and 8.
        assert np.array_equal(cell(strip, 0, 0), gen[0]) and np.array_equal(cell(strip, 0, 2), gen[3])
        assert np.array_equal(cell(strip, 0, 4), gen[7]) and np.array_equal(cell(strip, 0, 1), frames[2])


def test_project_recovers_a_generated_image_and_generate_ws_renders_it(run: Path, tmp_path: Path):
    G = checkpoint.load_generator(run)
    ws = seed_ws(G, [11])
    np.save(tmp_path / "known.npy", ws.numpy())
    r = invoke("generate", "--ckpt", run, "--ws", tmp_path / "known.npy", "--out", tmp_path / "known", "--no-progress")
    assert r.exit_code == 0, r.output
    target = tmp_path / "known" / "ws0000.png"
    expected = np.asarray(((synthesize(G, ws)[0, 0] * 127.5 + 128).clamp(0, 255)).to(torch.uint8))
    assert np.array_equal(png(target), expected)

    out = tmp_path / "proj"
    r = invoke("project", "--ckpt", run, "--target", target, "--steps", 80, "--out", out, "--no-progress")
    assert r.exit_code == 0, r.output
    for name in ("target_projected.png", "projected.png", "projected_w.npy", "progress.png", "loss.png"):
        assert (out / name).is_file(), name
    assert png(out / "target_projected.png").shape == (64, 2 * 64 + PAD)
    assert np.array_equal(cell(png(out / "target_projected.png"), 0, 0), png(target))
    proj_ws = np.load(out / "projected_w.npy")
    assert proj_ws.shape == (1, G.num_ws, G.w_dim) and np.isfinite(proj_ws).all()
    # Recovered within a small distance: far closer than another seed's image is.
    tgt, got = png(target) / 127.5 - 1, png(out / "projected.png") / 127.5 - 1
    other = np.asarray(synthesize(G, seed_ws(G, [12]))[0, 0].clamp(-1, 1))
    start = np.asarray(synthesize(G, G.w_avg.expand(1, G.num_ws, -1))[0, 0].clamp(-1, 1))  # where the search begins
    dist = ((got - tgt) ** 2).mean()
    assert dist < 0.1 * ((other - tgt) ** 2).mean() and dist < 0.2 * ((start - tgt) ** 2).mean()
    # The loss falls on average (the log has one value per step).
    losses = [float(x) for x in r.output.split("loss ")[1].split(",")[0].split(" -> ")]
    assert losses[1] < 0.2 * losses[0]
    # generate --ws redraws the projection exactly (the stored noise was used).
    r = invoke("generate", "--ckpt", run, "--ws", out / "projected_w.npy", "--out", tmp_path / "again", "--no-progress")
    assert r.exit_code == 0, r.output
    assert np.array_equal(png(tmp_path / "again" / "ws0000.png"), png(out / "projected.png"))
    assert png(out / "progress.png").shape[1] == 8 * 64 + 7 * PAD
    # --real INDEX fits a training image: the left half of the pair is that image.
    r = invoke("project", "--ckpt", run, "--real", 3, "--steps", 2, "--out", tmp_path / "real", "--no-progress")
    assert r.exit_code == 0, r.output
    ds = open_dataset(str(run.parent / "AD_NC"), 16, 1, cache_dir=str(tmp_path / "c"), progress=False)
    assert np.array_equal(cell(png(tmp_path / "real" / "target_projected.png"), 0, 0), ds.images[3, 0])


def test_project_loss_falls_on_average_with_w_plus_and_noise(run: Path):
    from stylegan2.explore import project
    G, D = checkpoint.load_generator(run), checkpoint.load_discriminator(run)
    target = synthesize(G, seed_ws(G, [5]))
    res = project(G, target, D=D, steps=60, w_plus=True, fit_noise=True, seed=1)
    assert res.ws.shape == (1, G.num_ws, G.w_dim) and set(res.noise) and len(res.losses) == 60
    q = len(res.losses) // 4
    means = [np.mean(res.losses[i * q:(i + 1) * q]) for i in range(4)]
    assert all(b < a for a, b in zip(means, means[1:])), means
    for n in res.noise.values():  # renormalised after every step
        assert abs(float(n.mean())) < 1e-4 and float(n.square().mean()) == pytest.approx(1, abs=1e-3)
    assert G.synthesis.blocks["b4"].conv1.noise_const.requires_grad is False  # G itself untouched


def test_embed_writes_one_row_per_image_with_label_and_source(run: Path, tmp_path: Path):
    out = tmp_path / "embed"
    r = invoke("embed", "--ckpt", run, "--n", 30, "--out", out, "--no-progress", "--neighbors", 5)
    assert r.exit_code == 0, r.output
    assert "numba" in r.output
    ds = open_dataset(str(run.parent / "AD_NC"), 16, 1, cache_dir=str(tmp_path / "c"), progress=False)
    rows = list(csv.DictReader(open(out / "embed.csv")))
    real = [x for x in rows if x["source"] == "real"]
    fake = [x for x in rows if x["source"] == "generated"]
    assert len(real) == len(ds) == 20 and len(fake) == 30
    assert sorted(int(x["index"]) for x in real) == list(range(20))
    for x in real:
        assert x["label"] == ds.label_names[ds.labels[int(x["index"])]]
        assert x["w_x"] == "" and math.isfinite(float(x["x"]))
    assert [int(x["index"]) for x in fake] == list(range(30)) and all(x["label"] == "" for x in fake)
    xy = np.array([[float(x["x"]), float(x["y"])] for x in rows])
    wxy = np.array([[float(x["w_x"]), float(x["w_y"])] for x in fake])
    assert xy.std(axis=0).min() > 0 and wxy.std(axis=0).min() > 0
    doc = json.loads((out / "embed.json").read_text())
    assert doc["feature_network"].startswith("discriminator") and doc["umap"]["n_neighbors"] == 5
    assert doc["label_field"] == "diagnosis" and doc["num_real"] == 20
    img = Image.open(out / "embed.png")
    assert img.size[0] > 600 and np.asarray(img.convert("L")).std() > 5
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    # Deterministic for a seed (UMAP is compiled by now, so these calls are quick).
    from stylegan2.explore import umap_2d
    x = np.random.default_rng(0).standard_normal((40, 6))
    a, b = umap_2d(x, n_neighbors=5, min_dist=0.1, seed=3), umap_2d(x, n_neighbors=5, min_dist=0.1, seed=3)
    assert np.array_equal(a, b) and not np.array_equal(a, umap_2d(x, n_neighbors=5, min_dist=0.1, seed=4))


def test_bad_input_is_one_line_before_work_and_leaves_nothing(run: Path, tmp_path: Path):
    out = tmp_path / "o"
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"\x00not a checkpoint" * 10)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8), "RGB").save(rgb)
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((32, 32), np.uint8), "L").save(big)
    bad_ws = tmp_path / "bad.npy"
    np.save(bad_ws, np.zeros((2, 3)))
    cases = [
        (("mix", "--ckpt", tmp_path / "missing", "--rows", "0", "--cols", "1"), ("does not exist",)),
        (("mix", "--ckpt", bogus, "--rows", "0", "--cols", "1"), ("bogus.pt",)),
        (("mix", "--ckpt", run, "--rows", "0-x", "--cols", "1"), ("--rows", "0-x")),
        (("mix", "--ckpt", run, "--rows", "0", "--cols", "1", "--styles", "2-9"), ("--styles", "out of range")),
        (("mix", "--ckpt", run, "--rows", "0", "--cols", "1", "--styles", "middle"), ("--styles", "middle")),
        (("interpolate", "--ckpt", run, "--seeds", "4"), ("--seeds", "at least 2")),
        (("project", "--ckpt", run, "--target", rgb), ("--target", "RGB")),
        (("project", "--ckpt", run, "--target", big), ("--target", "32x32", "16x16")),
        (("project", "--ckpt", run, "--target", big, "--lpips"), ("32x32",)),
        (("project", "--ckpt", run, "--target", bad_ws), ("--target", "not a readable image")),
        (("project", "--ckpt", bogus, "--target", big), ("bogus.pt",)),
        (("project", "--ckpt", run), ("--target FILE or --real INDEX",)),
        (("project", "--ckpt", run, "--real", 20), ("--real", "past the last image", "20 images")),
        (("embed", "--ckpt", run, "--label", "split", "--data", tmp_path / "flat"), ("--label", "no splits")),
        (("embed", "--ckpt", run, "--feature-net", "inception"), ("inception",)),
        (("generate", "--ckpt", run, "--ws", bad_ws), ("--ws", "shape")),
    ]
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(4):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8), "L").save(flat / f"{i}.png")
    for args, words in cases:
        args = (*args, "--out", out)
        r = invoke(*args)
        one_line_error(r, *words)
        assert not out.exists(), args
    # LPIPS without its file: says where to put it.
    target = tmp_path / "ok.png"
    Image.fromarray(np.zeros((16, 16), np.uint8), "L").save(target)
    r = invoke("project", "--ckpt", run, "--target", target, "--lpips", "--out", out)
    one_line_error(r, "vgg16.pt", "never downloaded")
    assert not out.exists()


class _StandInVGG(torch.nn.Module):
    """The call NVlabs' vgg16.pt answers, with a tiny conv inside (their file is not here)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=4)

    def forward(self, x: torch.Tensor, resize_images: bool = True, return_lpips: bool = False) -> torch.Tensor:
        f = self.conv(x / 255.0)
        f = f.flatten(1)
        return f / f.square().sum(dim=1, keepdim=True).sqrt()


def test_lpips_from_a_local_torchscript_file_enters_the_loss(run: Path, tmp_path: Path):
    from stylegan2.explore import lpips_features, project
    path = tmp_path / "vgg16.pt"
    torch.jit.script(_StandInVGG()).save(str(path))
    feats = lpips_features(path)
    G = checkpoint.load_generator(run)
    target = synthesize(G, seed_ws(G, [2]))
    f = feats(target)
    assert f.shape[0] == 1 and torch.isfinite(f).all()
    res = project(G, target, steps=6, lpips=feats, feature_weight=0)
    assert "lpips" in res.parts and "features" not in res.parts and res.parts["lpips"][0] > 0
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    with pytest.raises(ExploreError, match="not NVlabs' TorchScript VGG16"):
        lpips_features(bad)


def test_conditional_model_fakes_carry_their_class_and_mix_takes_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    embed_module = importlib.import_module("stylegan2.explore.embed")  # the package's `embed` is the function
    adni = write_adni(tmp_path / "AD_NC", 3, seed=2)
    cfg, _ = make_config("tiny", {"data": str(adni), "cond": True})
    ds = open_dataset(str(adni), cfg.resolution, cfg.channels, cache_dir=str(tmp_path / "cache"), progress=False)
    run_dir = tmp_path / "00000-AD_NC-tiny"
    checkpoint.save_checkpoint(state.setup_run(cfg, ds, torch.device("cpu")), run_dir)
    r = invoke("mix", "--ckpt", run_dir, "--rows", "0", "--cols", "1", "--out", tmp_path / "m", "--no-progress")
    one_line_error(r, "--class", "conditional")
    r = invoke("mix", "--ckpt", run_dir, "--rows", "0", "--cols", "1", "--class", "NC", "--out", tmp_path / "m",
               "--no-progress")
    assert r.exit_code == 0, r.output
    # The embedding itself is UMAP's (tested once above); here a projection stands in for it.
    monkeypatch.setattr(embed_module, "umap_2d", lambda x, **kw: np.asarray(x, dtype=np.float64)[:, :2])
    G = checkpoint.load_generator(run_dir)
    net = embed_module.FeatureNetwork("first pixels", 2, lambda x: x.flatten(1)[:, :2], torch.device("cpu"))
    e = embed_module.embed(G, ds, net, n=10, labels=dataset_labels(ds, str(adni), "class")[1],
                           class_names=ds.label_names, seed=3)
    _, _, classes = embed_module.generate_for_embedding(G, 10, seed=3)
    fake_labels = [lab for lab, src in zip(e.label, e.source) if src == "generated"]
    assert fake_labels == [ds.label_names[k] for k in classes] and len(set(fake_labels)) == 2


def test_load_ws_accepts_w_and_w_plus_and_refuses_the_rest(tmp_path: Path):
    from stylegan2.sampling import load_ws
    g = np.random.default_rng(0)
    for num_ws, w_dim in ((6, 32), (8, 5)):
        plus = g.standard_normal((3, num_ws, w_dim)).astype(np.float32)
        np.save(tmp_path / "plus.npy", plus)
        assert torch.equal(load_ws(tmp_path / "plus.npy", num_ws, w_dim), torch.from_numpy(plus))
        w = g.standard_normal((2, w_dim))
        np.save(tmp_path / "w.npy", w)
        got = load_ws(tmp_path / "w.npy", num_ws, w_dim)
        assert got.shape == (2, num_ws, w_dim)
        assert all(torch.equal(got[:, k], torch.from_numpy(w).float()) for k in range(num_ws))
        np.save(tmp_path / "one.npy", w[0])
        assert load_ws(tmp_path / "one.npy", num_ws, w_dim).shape == (1, num_ws, w_dim)
    bad = {"shape.npy": np.zeros((2, 7, 32)), "nan.npy": np.full((1, 6, 32), np.nan),
           "objects.npy": np.array([{"w": 1}], dtype=object)}
    for name, arr in bad.items():
        np.save(tmp_path / name, arr, allow_pickle=True)
        with pytest.raises(ValueError, match=name):
            load_ws(tmp_path / name, 6, 32)
    (tmp_path / "text.npy").write_text("not numpy")
    with pytest.raises(ValueError, match="not a readable .npy"):
        load_ws(tmp_path / "text.npy", 6, 32)
