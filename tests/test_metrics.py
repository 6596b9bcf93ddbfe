"""stylegan2.metrics against independent computations: scipy's sqrtm for FID, explicit loops for
MMD, point clouds whose precision/recall is known by construction, planted copies for the audit."""
from __future__ import annotations

import csv
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from stylegan2.data import ImageDataset
from stylegan2.metrics import (INCEPTION_FILE, INCEPTION_SHA256_PREFIX, INCEPTION_URL, INCEPTION_WEIGHTS_ENV,
                               FeatureNetwork, FeatureNetworkError, audit_memorization, compute_metrics,
                               extract_features, fake_batches, fid, generator_from_checkpoint, get_feature_network,
                               kid, kth_nearest, mmd2_unbiased, precision_recall, real_features)

NET = dict(network="test", reference="test set")


# --------------------------------------------------------------------------------------------
# FID

def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The closed form as the FID paper writes it, with scipy's general matrix square root."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root))


def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 32))
    r = fid(x, x, **NET)
    assert abs(r.value) < 1e-8
    assert (r.metric, r.network, r.num_real, r.num_fake, r.reference) == ("fid", "test", 500, 500, "test set")


@pytest.mark.parametrize("shift, scale", [(0.0, 1.0), (0.5, 1.0), (0.0, 2.0), (1.0, 0.5)])
def test_fid_matches_the_closed_form_of_gaussian_samples(shift, scale):
    rng = np.random.default_rng(1)
    mix = rng.normal(size=(16, 16))  # correlated features, as real ones are
    a = rng.normal(size=(800, 16)) @ mix
    b = (rng.normal(size=(600, 16)) * scale + shift) @ mix.T
    assert fid(a, b, **NET).value == pytest.approx(scipy_fid(a, b), rel=1e-6, abs=1e-8)


def test_fid_with_fewer_images_than_dimensions_stays_finite():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(20, 64)), rng.normal(size=(20, 64)) + 0.3
    v = fid(a, b, **NET).value
    assert np.isfinite(v) and v == pytest.approx(scipy_fid(a, b), rel=1e-4)


# --------------------------------------------------------------------------------------------
# KID

def test_mmd2_unbiased_matches_explicit_sums():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(7, 5)), rng.normal(size=(9, 5)) + 0.2
    k = lambda u, v: (u @ v / 5 + 1) ** 3
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(9)) / (7 * 9)
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_kid_is_unbiased_on_identical_distributions_and_positive_when_shifted():
    rng = np.random.default_rng(4)
    same, shifted = [], []
    for rep in range(20):
        real, fake = rng.normal(size=(150, 8)), rng.normal(size=(150, 8))
        same.append(kid(real, fake, num_subsets=5, subset_size=100, seed=rep, **NET).value)
        shifted.append(kid(real, fake + 0.5, num_subsets=5, subset_size=100, seed=rep, **NET).value)
    same, shifted = np.array(same), np.array(shifted)
    # Unbiased: the mean over independent repeats is within 3 standard errors of 0.
    assert abs(same.mean()) < 3 * same.std(ddof=1) / np.sqrt(len(same))
    assert shifted.min() > same.max()
    r = kid(real, fake, num_subsets=5, subset_size=1000, **NET)
    assert r.details["subset_size"] == 150 and r.num_real == r.num_fake == 150


# --------------------------------------------------------------------------------------------
# precision / recall

def test_kth_nearest_matches_brute_force():
    rng = np.random.default_rng(5)
    q, ref = rng.normal(size=(37, 6)), rng.normal(size=(53, 6))
    d_all = np.sqrt(((q[:, None] - ref[None]) ** 2).sum(-1))
    d, i = kth_nearest(q, ref, 3, chunk=8, ref_chunk=10)
    assert np.allclose(d, np.sort(d_all, axis=1)[:, 2]) and np.array_equal(i, np.argsort(d_all, axis=1)[:, 2])
    self_d = np.sqrt(((ref[:, None] - ref[None]) ** 2).sum(-1)) + np.diag(np.full(53, np.inf))
    d, _ = kth_nearest(ref, ref, 1, exclude_self=True, chunk=8, ref_chunk=10)
    assert np.allclose(d, self_d.min(axis=1))
    some = np.array([4, 17, 50])
    d, _ = kth_nearest(ref[some], ref, 1, self_index=some, chunk=2, ref_chunk=10)
    assert np.allclose(d, self_d.min(axis=1)[some])
    # uint8 input (pixels) is converted a chunk at a time and gives the float answer.
    u = np.random.default_rng(7).integers(0, 256, size=(9, 1, 4, 4), dtype=np.uint8)
    d, i = kth_nearest(u[:3], u, 2)
    f = u.reshape(9, -1).astype(np.float64)
    brute = np.sqrt(((f[:3, None] - f[None]) ** 2).sum(-1))
    assert np.allclose(d, np.sort(brute, axis=1)[:, 1], rtol=1e-5)


def test_precision_recall_on_point_clouds_with_known_answers():
    rng = np.random.default_rng(6)
    cluster = lambda centre, n: centre + 0.1 * rng.normal(size=(n, 2))
    real_a, real_b = cluster([0, 0], 20), cluster([10, 0], 20)
    real = np.concatenate([real_a, real_b])
    # Fakes: exact copies of real cluster A (inside the real manifold, and covering A) and a
    # cluster far from everything real (outside it, covering nothing real). Cluster B is missed.
    fake = np.concatenate([real_a, cluster([100, 100], 10)])
    p, r = precision_recall(real, fake, k=3, **NET)
    assert p.value == pytest.approx(20 / 30) and r.value == pytest.approx(20 / 40)
    assert (p.metric, r.metric, p.details["k"], p.num_real, p.num_fake) == ("precision", "recall", 3, 40, 30)
    p, r = precision_recall(real, real.copy(), **NET)
    assert p.value == r.value == 1.0


# --------------------------------------------------------------------------------------------
# memorization audit

def blobs(n: int, res: int = 16, seed: int = 0) -> np.ndarray:
    """uint8 [n, 1, res, res]: bright ellipses of random size and position on noise."""
    g = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, res), np.linspace(-1, 1, res), indexing="ij")
    p = g.random((n, 5))[:, :, None, None]
    inside = ((xx - (p[:, 0] - 0.5) * 0.6) / (0.3 + 0.5 * p[:, 2])) ** 2 \
        + ((yy - (p[:, 1] - 0.5) * 0.6) / (0.3 + 0.5 * p[:, 3])) ** 2 < 1
    img = inside * (120 + 120 * p[:, 4]) + 15 * g.random((n, res, res))
    return np.clip(img, 0, 255).astype(np.uint8)[:, None]


def smooth_noise(n: int, res: int = 16, seed: int = 1) -> torch.Tensor:
    """[n, 1, res, res] in [-1, 1]: upsampled 4x4 noise, what a generator that cannot copy makes."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, 4, 4, generator=g) * 2 - 1
    return F.interpolate(low, size=(res, res), mode="bilinear", align_corners=False)


def pooled_net() -> FeatureNetwork:
    """A small feature network the test builds: 4x4 average pooling, flattened."""
    return FeatureNetwork("pool4", 16, lambda x: F.avg_pool2d(x, 4).flatten(1), torch.device("cpu"))


def test_audit_flags_planted_copies_and_nothing_else(tmp_path):
    train = ImageDataset(blobs(64), source="blobs (64)")
    real = torch.from_numpy(train.images).float() / 127.5 - 1
    noised = (real[10] + 2 / 127.5 * torch.randn(real[10].shape, generator=torch.Generator().manual_seed(0)))
    fakes = torch.cat([real[3:4], noised[None], smooth_noise(8)])
    res = audit_memorization(fakes, train, tmp_path / "audit", net=pooled_net(), grid_pairs=4)
    for m in res.measures:
        assert m.flagged.tolist() == [True, True] + [False] * 8, (m.name, m.distance, m.threshold)
        assert m.nearest[0] == 3 and m.nearest[1] == 10
    assert res.measure("pixel").distance[0] < 1e-3 and res.measure("pixel").fraction_flagged == pytest.approx(0.2)
    rows = list(csv.DictReader(open(tmp_path / "audit" / "pairs.csv")))
    assert len(rows) == 10 and rows[0]["pixel_nearest_train"] == "3" and rows[0]["pixel_flagged"] == "1"
    assert "feature:pool4_distance" in rows[0]
    summary = json.loads((tmp_path / "audit" / "summary.json").read_text())
    assert summary["measures"]["pixel"]["num_flagged"] == 2 and summary["reference"] == "blobs (64)"
    from PIL import Image
    grid = Image.open(tmp_path / "audit" / "closest_pairs.png")
    # 4 rows of (fake, nearest by pixels, nearest by features), 16 px tiles enlarged to 64.
    assert grid.size == (3 * 64 + 2 * 2, 4 * 64 + 3 * 2)


def test_audit_flags_an_exact_copy_even_when_the_real_set_has_duplicates():
    train = blobs(20)
    train[5:10] = train[0]  # a quarter of the set is one slice: the calibrated threshold is 0
    fakes = torch.from_numpy(np.concatenate([train[12:13], blobs(3, seed=9)]))
    res = audit_memorization(fakes, train)
    pixel = res.measure("pixel")
    assert pixel.threshold == 0 and pixel.real_nn_percentiles["fraction_exact_duplicates"] == pytest.approx(0.3)
    assert pixel.flagged.tolist() == [True, False, False, False]


def test_audit_of_a_generator_that_cannot_copy_flags_nothing():
    train = blobs(64)
    res = audit_memorization(smooth_noise(32, seed=7), train, net=pooled_net())
    assert all(m.fraction_flagged == 0.0 for m in res.measures)
    # Calibrating on a sample of the real images finds the same kind of threshold.
    sampled = audit_memorization(smooth_noise(32, seed=7), train, calib_n=32)
    assert sampled.measure("pixel").fraction_flagged == 0.0
    assert 0 < sampled.measure("pixel").threshold < 2


# --------------------------------------------------------------------------------------------
# feature networks

def test_inception_without_weights_is_one_clear_error(tmp_path, monkeypatch):
    pytest.importorskip("pytorch_fid")  # without it the error is "install pytorch-fid" instead
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(FeatureNetworkError) as e:
        get_feature_network("inception")
    msg = str(e.value)
    expected = tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION_FILE
    assert str(expected) in msg and INCEPTION_URL in msg and INCEPTION_SHA256_PREFIX in msg
    assert INCEPTION_WEIGHTS_ENV in msg and "\n" not in msg
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(tmp_path / "elsewhere.pth"))
    with pytest.raises(FeatureNetworkError, match="elsewhere.pth"):
        get_feature_network("inception")


def stand_in_inception_weights(path) -> None:
    """A randomly initialised state dict of the FID Inception, built from pytorch-fid's own classes
    the way its fid_inception_v3 builds the network (minus the download)."""
    pfid = pytest.importorskip("pytorch_fid.inception")
    net = pfid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pfid.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfid.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfid.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfid.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfid.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfid.FIDInceptionE_1(1280)
    net.Mixed_7c = pfid.FIDInceptionE_2(2048)
    torch.save(net.state_dict(), path)


def test_inception_wiring_with_stand_in_weights(tmp_path, monkeypatch):
    weights = tmp_path / "stand_in.pth"
    stand_in_inception_weights(weights)
    # The stand-in is not the published file: the checksum check refuses it by default.
    with pytest.raises(FeatureNetworkError, match="SHA-256"):
        get_feature_network("inception", inception_weights=weights)
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(weights))
    net = get_feature_network("inception", check_hash=False)
    gray = torch.from_numpy(blobs(2, res=32))  # uint8, 1 channel, 32x32
    feats = net(gray)
    assert feats.shape == (2, 2048) and net.dim == 2048 and net.name == "inception"
    assert torch.isfinite(feats).all()
    # A grayscale image is the same image as its 3-channel copy.
    assert torch.allclose(feats, net(gray.repeat(1, 3, 1, 1)))
    # Built from several threads at once: every one gets the local weights, and pytorch-fid's
    # downloader is its own again afterwards (an unguarded swap could leave a stand-in behind).
    from concurrent.futures import ThreadPoolExecutor

    from pytorch_fid import inception as pfid
    original = pfid.load_state_dict_from_url
    with ThreadPoolExecutor(3) as pool:
        nets = list(pool.map(lambda _: get_feature_network("inception", check_hash=False), range(3)))
    assert pfid.load_state_dict_from_url is original
    for other in nets:
        assert torch.allclose(other(gray), feats, atol=1e-5)


def test_torchscript_feature_network(tmp_path):
    path = tmp_path / "enc.pt"
    torch.jit.script(torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.Flatten())).save(str(path))
    net = get_feature_network(f"torchscript:{path}")
    feats = extract_features(net, blobs(5), batch=2)
    assert feats.shape == (5, 16) and net.name == "torchscript:enc.pt" and net.dim == 16
    with pytest.raises(FeatureNetworkError, match="no file"):
        get_feature_network(f"torchscript:{tmp_path / 'missing.pt'}")
    with pytest.raises(FeatureNetworkError, match="unknown feature network"):
        get_feature_network("vgg")


@pytest.mark.parametrize("dynamic", ["unbounded", "bounded", "fixed"])
def test_exported_feature_network(tmp_path, gen, dynamic):
    """A torch.export program (TorchScript's successor): the features are the module's own, for
    any batch size, also when it was exported with a fixed one (fed padded batches) or a bounded
    dynamic one (fed chunks within the bounds)."""
    encoder = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3), torch.nn.BatchNorm2d(6), torch.nn.Tanh(),
                                  torch.nn.AdaptiveAvgPool2d(2)).eval()
    with torch.no_grad():  # running statistics that are not the identity
        encoder[1].running_mean.normal_(generator=gen)
        encoder[1].running_var.uniform_(0.5, 2, generator=gen)
    example = torch.rand(4, 1, 12, 12, generator=gen) * 2 - 1
    dims = {"unbounded": torch.export.Dim("batch"), "bounded": torch.export.Dim("batch", min=2, max=4)}
    shapes = ({0: dims[dynamic]},) if dynamic in dims else None
    path = tmp_path / "enc.pt2"
    torch.export.save(torch.export.export(encoder, (example,), dynamic_shapes=shapes), str(path))
    net = get_feature_network(f"exported:{path}")
    images = torch.rand(11, 1, 12, 12, generator=gen) * 2 - 1
    feats = extract_features(net, images, batch=5)  # batches of 5 and a last one of 1
    with torch.no_grad():
        expected = encoder(images).flatten(1).double().numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-6)
    assert feats.shape == (11, 24) and net.dim == 24 and net.name == "exported:enc.pt2"
    assert net.key.startswith("exported-")


class _TwoOut(torch.nn.Module):
    def forward(self, x):
        return x.mean((2, 3)), x.amax((2, 3))


class _TwoIn(torch.nn.Module):
    def forward(self, x, y):
        return x.mean((2, 3)) + y.mean((2, 3))


class _Payload:
    """Unpickling this would run `touch MARKER`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_exported_feature_network_bad_files(tmp_path):
    with pytest.raises(FeatureNetworkError, match="no file"):
        get_feature_network(f"exported:{tmp_path / 'missing.pt2'}")
    junk = tmp_path / "junk.pt2"
    junk.write_text("not a program")
    with pytest.raises(FeatureNetworkError, match="junk.pt2 is not a torch.export program"):
        get_feature_network(f"exported:{junk}")
    state = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(2)}, state)  # a zip, but a state dict
    with pytest.raises(FeatureNetworkError, match="weights.pt is not a torch.export program"):
        get_feature_network(f"exported:{state}")
    x = torch.rand(2, 1, 8, 8)
    for module, args, words in ((_TwoOut(), (x,), "takes 1 and returns 2"), (_TwoIn(), (x, x), "takes 2 and returns 1")):
        path = tmp_path / f"{type(module).__name__}.pt2"
        torch.export.save(torch.export.export(module, args), str(path))
        with pytest.raises(FeatureNetworkError, match=words):
            get_feature_network(f"exported:{path}")
    # A program with a pickle that calls code inside (where torch.export.load would unpickle it
    # with weights_only=False): refused from its opcodes, and nothing runs.
    good = tmp_path / "good.pt2"
    torch.export.save(torch.export.export(torch.nn.Flatten(), (x,)), str(good))
    get_feature_network(f"exported:{good}")  # the unmodified file loads
    marker = tmp_path / "MARKER"
    hostile = tmp_path / "hostile.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(hostile, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("good/data/constants/tensor_constant0", pickle.dumps(_Payload(marker)))
    with pytest.raises(FeatureNetworkError, match="refused because loading it would unpickle code .*system"):
        get_feature_network(f"exported:{hostile}")
    assert not marker.exists()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint of the tiny preset (16x16), made with the project's own training code."""
    from stylegan2.training import checkpoint, state
    from stylegan2.training.config import make_config
    cfg, _ = make_config("tiny", {})
    dataset = ImageDataset(blobs(16), source="blobs (16)")
    run = state.setup_run(cfg, dataset, torch.device("cpu"))
    return checkpoint.save_checkpoint(run, tmp_path_factory.mktemp("run")), dataset


def test_discriminator_features_from_a_checkpoint(tiny_checkpoint):
    path, dataset = tiny_checkpoint
    net = get_feature_network("discriminator", ckpt=path)
    assert net.name == f"discriminator:{path.name}" and net.key.startswith("discriminator-")
    feats = extract_features(net, dataset.images, batch=5)
    assert feats.shape == (16, net.dim) and np.isfinite(feats).all() and feats.std(0).max() > 0
    # An image's features do not depend on its batch (minibatch std sees one image at a time).
    alone = extract_features(net, dataset.images[3:4])
    assert np.allclose(alone[0], feats[3], atol=1e-5)
    with pytest.raises(FeatureNetworkError, match="checkpoint"):
        get_feature_network("discriminator")


def test_real_features_are_cached_per_dataset_and_network(tiny_checkpoint, tmp_path, monkeypatch):
    path, dataset = tiny_checkpoint
    net = get_feature_network("discriminator", ckpt=path)
    first = real_features(dataset, net, cache_dir=tmp_path)
    assert first.path is not None and first.path.parent == tmp_path / "metrics"
    assert dataset.fingerprint()[:32] in first.path.name and first.reference == "blobs (16)"

    def no_extraction(*a, **k):
        raise AssertionError("features recomputed despite the cache")
    monkeypatch.setattr("stylegan2.metrics.cache.extract_features", no_extraction)
    again = real_features(dataset, net, cache_dir=tmp_path)
    assert np.array_equal(again.feats, first.feats) and np.allclose(again.stats.sigma, first.stats.sigma)
    r = fid(again.stats, first.feats.astype(np.float64), network=net.name, reference=again.reference)
    assert r.value < 1e-6 and r.network == net.name
    # Another network (the pooled test net) is another cache entry.
    monkeypatch.undo()
    other = real_features(dataset, pooled_net(), cache_dir=tmp_path)
    assert other.path != first.path and other.feats.shape == (16, 16)


def test_metrics_and_audit_of_a_checkpoint_end_to_end(tiny_checkpoint, tmp_path):
    path, dataset = tiny_checkpoint
    net = get_feature_network("discriminator", ckpt=path)
    real = real_features(dataset, net, cache_dir=tmp_path)
    G = generator_from_checkpoint(path)
    results = compute_metrics(fake_batches(G, 12, batch=5), real, net, ["fid", "kid", "pr"], kid_subsets=4)
    assert [r.metric for r in results] == ["fid", "kid", "precision", "recall"]
    assert all(np.isfinite(r.value) and r.num_fake == 12 and r.num_real == 16 for r in results)
    assert all(r.network == net.name and r.reference == "blobs (16)" for r in results)
    assert results[0].value > 0 and "fakes vs 16 reals of blobs (16)" in str(results[0])
    # One latent per seed: the fakes do not depend on the batch size (with constant noise).
    a = torch.cat(list(fake_batches(G, 4, batch=3, noise_mode="const")))
    # (up to rounding: batched matrix products may sum in another order)
    assert torch.allclose(a, torch.cat(list(fake_batches(G, 4, batch=4, noise_mode="const"))), atol=1e-5)
    # Random noise: the same call gives the same fakes, and the caller's random stream goes on
    # as if nothing had been drawn; another seed gives other noise on the same latents.
    with torch.no_grad():  # a trained G's noise strengths (a tiny run leaves them near 0)
        for name, param in G.named_parameters():
            if name.endswith("noise_strength"):
                param.fill_(0.5)
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    r1 = torch.cat(list(fake_batches(G, 5, batch=2, seed=7)))
    assert torch.equal(torch.get_rng_state(), before)
    r2 = torch.cat(list(fake_batches(G, 5, batch=2, seed=7)))
    assert torch.equal(r1, r2)
    const = torch.cat(list(fake_batches(G, 5, batch=2, seed=7, noise_mode="const")))
    assert not torch.allclose(r1, const, atol=1e-3)  # the noise does act
    other = torch.cat(list(fake_batches(G, 5, batch=2, seed=8)))
    assert not torch.allclose(r1[:4], other[:4], atol=1e-3)
    res = audit_memorization(a, dataset, tmp_path / "audit", net=net)
    assert res.num_fake == 4 and (tmp_path / "audit" / "closest_pairs.png").is_file()
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics(a, real, net, ["is"])
    other = FeatureNetwork(net.name, net.dim, lambda x: x, net.device, key="discriminator-other")
    with pytest.raises(ValueError, match="same feature network"):
        compute_metrics(a, real, other, ["fid"])
