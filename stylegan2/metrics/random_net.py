"""A fixed random convolutional network as a feature network: no weights file, no training run.

    net = get_feature_network("random")        # or "random:SEED"

Train-time metrics need one network for the whole run (FIDs of snapshots compare only when the
same network measured them, and the real statistics are then computed once); the discriminator
changes at every step, and the Inception weights may not be on the machine. Random
convolutional features are a known baseline for distribution distances (Naeem et al. 2020,
"Reliable fidelity and diversity metrics for generative models", use random embeddings), and
they respond to the low-level statistics a small brain-MRI GAN gets wrong first (contrast, edges,
blur). Their numbers are not comparable with Inception FIDs, and every report names the network.

Architecture: images resized to 64x64 (bilinear, antialiased), grayscale repeated to 3 channels,
four 3x3 convolutions (3 -> 32 -> 64 -> 128 -> 256) with He-scaled Gaussian weights drawn from a
generator seeded with SEED, leaky ReLU and 2x2 average pooling after each; the features are the
per-channel spatial mean and standard deviation of the last map (512 values).
"""
from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from .features import FeatureNetwork

SIZE = 64
WIDTHS = (3, 32, 64, 128, 256)
VERSION = 1  # bump when the architecture changes: cached statistics are filed under the key


def random_weights(seed: int) -> list[torch.Tensor]:
    """The conv weights for `seed`, drawn on the CPU so every device gets the same network."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for cin, cout in zip(WIDTHS[:-1], WIDTHS[1:]):
        fan_in = cin * 9
        out.append(torch.randn(cout, cin, 3, 3, generator=g) * (2.0 / fan_in) ** 0.5)
    return out


def random_network(seed: int, device: torch.device) -> FeatureNetwork:
    """The fixed random network of `seed` (see the module docstring)."""
    weights = [w.to(device) for w in random_weights(seed)]
    h = hashlib.sha256(f"random-v{VERSION}".encode())
    for w in weights:
        h.update(w.detach().cpu().contiguous().numpy().tobytes())

    def fn(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > SIZE)
        for w in weights:
            x = F.avg_pool2d(F.leaky_relu(F.conv2d(x, w, padding=1), 0.2), 2)
        flat = x.flatten(2)
        return torch.cat([flat.mean(2), flat.std(2)], dim=1)

    return FeatureNetwork(f"random:{seed}", 2 * WIDTHS[-1], fn, device, key=f"random-v{VERSION}-" + h.hexdigest()[:16])
