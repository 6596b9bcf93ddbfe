"""Checks that augmentation does not leak into the generated images.

Two checks, as issue 16 asks:
  * off means off: at p == 0 the pipeline returns its input bit for bit (same_bits()).
  * do the fakes of a run trained with some p look like the reals, or like augmented reals?
    orientation_stats() measures, per image, where the intensity mass sits and which way its
    main axis points (brains are upright and centred in every dataset here), template_angles()
    how far each head is turned from its best match with templates of the reals, and
    leak_score() compares fakes with reals by both. Rotated or shifted brains in the fakes move
    these numbers (on the CPU preset, a fixed p of 0.6 or more does: README, leak check).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when a and b hold the same values bit for bit (so -0.0 differs from +0.0, and a NaN
    equals the same NaN), in the same shape and dtype."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    int_type = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}[a.element_size()]
    return torch.equal(a.contiguous().view(int_type), b.contiguous().view(int_type))


def orientation_stats(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image position and orientation of the intensity mass.

    Args:
        images: [N, C, H, W] in [-1, 1] (channels are averaged; background at -1 weighs 0).
    Returns:
        cx, cy: [N] centroid offsets from the image centre, in fractions of the size.
        angle: [N] direction of the main axis of the second moments, in radians from the
            vertical, in (-pi/2, pi/2].
        elongation: [N] ratio of the main to the minor axis's spread (1 = no main axis, when
            the angle means little).
        anisotropy: [N] (major - minor) / (major + minor) of the second moments, in [0, 1):
            0 for a round mass, which has no direction to rotate.
    """
    x = images.detach().double().mean(dim=1)
    n, h, w = x.shape
    mass = (x + 1).clamp(min=0) / 2
    total = mass.sum(dim=[1, 2]).clamp(min=1e-12)
    ys = (torch.arange(h, dtype=torch.float64, device=x.device) + 0.5) / h - 0.5
    xs = (torch.arange(w, dtype=torch.float64, device=x.device) + 0.5) / w - 0.5
    cx = (mass * xs[None, None, :]).sum(dim=[1, 2]) / total
    cy = (mass * ys[None, :, None]).sum(dim=[1, 2]) / total
    dx, dy = xs[None, None, :] - cx[:, None, None], ys[None, :, None] - cy[:, None, None]
    sxx = (mass * dx * dx).sum(dim=[1, 2]) / total
    syy = (mass * dy * dy).sum(dim=[1, 2]) / total
    sxy = (mass * dx * dy).sum(dim=[1, 2]) / total
    # Main-axis angle of the 2x2 covariance, measured from the y axis.
    angle = 0.5 * torch.atan2(2 * sxy, syy - sxx)
    spread = torch.sqrt(((sxx - syy) / 2) ** 2 + sxy**2)
    major, minor = (sxx + syy) / 2 + spread, ((sxx + syy) / 2 - spread).clamp(min=1e-12)
    return {"cx": cx, "cy": cy, "angle": angle, "elongation": torch.sqrt(major / minor),
            "anisotropy": (major - minor) / (major + minor).clamp(min=1e-12)}


def alignment(stats: dict[str, torch.Tensor]) -> float:
    """How upright a sample is, from orientation_stats(): the anisotropy-weighted mean of
    cos(2 angle), over the mean anisotropy. 1 when every elongated image points up and down, 0 for
    directions spread evenly (or as many lying sideways as upright), -1 when all lie sideways.
    Round images weigh nothing, so a generator that draws blobs is not mistaken for one that
    draws rotated brains (the plain mean |angle| of leak_score's tilt is: a round blob's axis is
    arbitrary, 45 degrees on average)."""
    a = stats["anisotropy"]
    return float((a * torch.cos(2 * stats["angle"])).sum() / a.sum().clamp(min=1e-12))


# Registration (template_angles): images are compared at 64x64 at most, every 5 degrees; an image
# turned by more than TURNED_DEG from where it best matches the reals' template counts as turned.
_REGISTER_SIZE = 64
_REGISTER_STEP_DEG = 5.0
TURNED_DEG = 20.0


def _centred_mass(images: torch.Tensor) -> torch.Tensor:
    """[N, 1, h, w] intensity mass in [0, 1] (background 0), at most 64x64, each image moved so
    that its centroid sits at the centre (the shift is leak_score's centroid's business)."""
    x = images.detach().float().mean(dim=1, keepdim=True)
    mass = ((x + 1) / 2).clamp(0, 1)
    if mass.shape[-1] > _REGISTER_SIZE:
        mass = F.adaptive_avg_pool2d(mass, _REGISTER_SIZE)
    st = orientation_stats(mass * 2 - 1)
    n = mass.shape[0]
    theta = torch.zeros(n, 2, 3, dtype=mass.dtype, device=mass.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2], theta[:, 1, 2] = 2 * st["cx"].to(mass.dtype), 2 * st["cy"].to(mass.dtype)
    grid = F.affine_grid(theta, list(mass.shape), align_corners=False)
    return F.grid_sample(mass, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


_TEMPLATE_GROUPS = 4


def reals_template(reals: torch.Tensor) -> torch.Tensor:
    """Templates of the reals, [K, 1, h, w]: the mean centred intensity mass of each quarter of
    them by head area (small lower slices, ..., large ventricle-level ones), upright heads with
    their midline, what template_angles() registers each image against. One template for all
    would fit the lower slices' lobes poorly and misread them as turned."""
    mass = _centred_mass(reals)
    order = mass.flatten(1).sum(dim=1).argsort()
    groups = order.tensor_split(min(_TEMPLATE_GROUPS, len(order)))
    return torch.cat([mass[g].mean(dim=0, keepdim=True) for g in groups if len(g)])


def template_angles(images: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """Per image, the rotation (degrees, every 5, folded into [-90, 90): see below) that best
    matches a template: the angle by which turning the centred image back correlates most with
    one of them. Unlike the main
    axis of orientation_stats(), this sees a turned head whose outline is round or square, by
    its midline and the shape of its lobes. [N] float32 on the images' device."""
    mass = _centred_mass(images)
    t = template.to(mass.device, mass.dtype).flatten(1)  # [K, h*w], each zero-mean, unit norm
    t = t - t.mean(dim=1, keepdim=True)
    t = t / t.norm(dim=1, keepdim=True).clamp(min=1e-12)
    angles = torch.arange(-180.0, 180.0, _REGISTER_STEP_DEG, device=mass.device)
    n = mass.shape[0]
    scores = []
    for a in angles.tolist():
        c, s = math.cos(math.radians(a)), math.sin(math.radians(a))
        theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=mass.dtype, device=mass.device).expand(n, 2, 3)
        grid = F.affine_grid(theta, list(mass.shape), align_corners=False)
        turned = F.grid_sample(mass, grid, mode="bilinear", padding_mode="zeros", align_corners=False).flatten(1)
        centred = turned - turned.mean(dim=1, keepdim=True)
        norm = centred.norm(dim=1, keepdim=True).clamp(min=1e-12)
        scores.append(((centred / norm) @ t.T).amax(dim=1))  # the best-fitting template
    best = angles[torch.stack(scores, dim=1).argmax(dim=1)]
    # Axial slices are close to symmetric under a half turn at these sizes (the outline and the
    # midline stay): registration confuses a head with its half turn, so the angle is of the
    # head's axis, folded into [-90, 90).
    return torch.remainder(best + 90, 180) - 90


def leak_score(fakes: torch.Tensor, reals: torch.Tensor, template: torch.Tensor | None = None) -> dict[str, float]:
    """How far the fakes' placement departs from the reals' (host floats; 0 = alike).

    template: reals_template() of a reference set of reals; None uses `reals` itself.
    Returns:
        centroid: distance between the mean centroids, fraction of the size.
        centroid_spread: difference of the per-image centroid spreads (shifted fakes spread more).
        angle_deg: difference of the mean |main-axis angle|, in degrees (rotated fakes tilt more).
        alignment: difference of alignment() (rotated fakes are less upright: negative).
        turned: difference of the shares of images turned by more than TURNED_DEG from where they
            best match the reals' template (template_angles(); turned fakes: positive).
        template_deg: difference of the mean |template angle|, in degrees.
    """
    f, r = orientation_stats(fakes), orientation_stats(reals)
    centroid = math.hypot(float(f["cx"].mean() - r["cx"].mean()), float(f["cy"].mean() - r["cy"].mean()))
    spread_f = float(torch.sqrt(f["cx"].var(unbiased=False) + f["cy"].var(unbiased=False)))
    spread_r = float(torch.sqrt(r["cx"].var(unbiased=False) + r["cy"].var(unbiased=False)))
    angle = float(f["angle"].abs().mean() - r["angle"].abs().mean()) * 180 / math.pi
    template = reals_template(reals) if template is None else template
    tf, tr = template_angles(fakes, template).abs(), template_angles(reals, template).abs()
    return {"centroid": centroid, "centroid_spread": spread_f - spread_r, "angle_deg": angle,
            "alignment": alignment(f) - alignment(r),
            "turned": float((tf > TURNED_DEG).float().mean() - (tr > TURNED_DEG).float().mean()),
            "template_deg": float(tf.mean() - tr.mean())}
