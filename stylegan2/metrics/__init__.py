"""Quality and privacy in numbers: feature networks, FID, KID, precision/recall, and a
memorization audit. Functions a notebook calls directly; the `metrics` and `audit` commands are
thin wrappers over them.

    net = get_feature_network("discriminator", ckpt=RUN)    # or "inception", "random", "torchscript:PATH"
    ref = reference_set(DATA, 64, 1, used_split="train")   # the held-out split where there is one
    real = real_features(dataset, net)                      # cached per dataset and network
    fake = extract_features(net, fake_images)               # float64 [N, dim]
    fid(real.stats, fake, network=net.name, reference=real.reference)
    compute_metrics(fake_batches(generator_from_checkpoint(RUN), 10000), real, net, ["fid", "kid", "pr"])
    kid(real.feats, fake, ...); precision_recall(real.feats, fake, ...)
    audit_memorization(fake_images, dataset, "audit/", net=net)

Every result (MetricResult) names its feature network, image counts and reference set.
"""
from .audit import AuditMeasure, AuditResult, audit_memorization, write_audit
from .cache import RealFeatures, metrics_cache_dir, real_features
from .evaluate import METRICS, compute_metrics, fake_batches, generator_from_checkpoint
from .features import (INCEPTION_FILE, INCEPTION_SHA256_PREFIX, INCEPTION_URL, INCEPTION_WEIGHTS_ENV,
                       FeatureNetwork, FeatureNetworkError, extract_features, get_feature_network,
                       inception_weights_path, to_unit_range)
from .neighbors import kth_nearest, within_any_ball
from .reference import Reference, reference_set
from .scores import (GaussianStats, MetricResult, fid, frechet_distance, gaussian_stats, kid, mmd2_unbiased,
                     precision_recall)

__all__ = [
    "AuditMeasure", "AuditResult", "FeatureNetwork", "FeatureNetworkError", "GaussianStats", "INCEPTION_FILE",
    "INCEPTION_SHA256_PREFIX", "INCEPTION_URL", "INCEPTION_WEIGHTS_ENV", "METRICS", "MetricResult",
    "RealFeatures", "Reference", "audit_memorization", "compute_metrics", "extract_features", "fake_batches", "fid",
    "frechet_distance", "gaussian_stats", "generator_from_checkpoint", "get_feature_network",
    "inception_weights_path", "kid", "kth_nearest", "metrics_cache_dir", "mmd2_unbiased", "precision_recall",
    "real_features", "reference_set", "to_unit_range", "within_any_ball", "write_audit",
]
