"""StyleGAN2 losses: non-saturating logistic + lazy R1 + lazy path-length regularization
(stylegan2-ada-pytorch's defaults), with WGAN-GP as an option.

The training loop runs four phases; each method returns one scalar tensor to backpropagate:

    g_main(z, c)                      every G step   generator loss (style mixing inside)
    g_reg(z, c)                       every cfg.g_reg_interval G steps   path-length penalty
    d_main(real_img, real_c, z, c)    every D step   discriminator loss on reals and fakes
    d_reg(real_img, real_c)           every cfg.d_reg_interval D steps   R1 (or the WGAN-GP
                                                                         gradient penalty)

Lazy regularization (Karras et al. 2020, appendix B): a regularizer evaluated only every k-th
step is multiplied by k, so on average it weighs what it would weigh every step. g_reg and
d_reg multiply by cfg.g_reg_interval and cfg.d_reg_interval themselves: the caller must run
them exactly that often (set the interval to 1 to regularize every step), and should adjust
Adam with `lazy_optimizer_settings`.

Each phase freezes the network it does not train: g_* build their graph with D's parameters
not requiring grad (so G's loss leaves D's .grad alone), d_* run G under no_grad. Nothing
here reads a value back to the host: the per-term statistics go to `self.stats` as detached
device tensors, for the loop to read at tick boundaries.

Augmentation (stylegan2.augment, issue 16): every image D sees, real or generated, in every
phase, first goes through `self.augment` (None: none). R1 is taken with respect to the real
images before augmentation, through it (the pipeline is twice differentiable), as in
StyleGAN2-ADA; d_main hands D's real logits to `augment.accumulate` for ADA's r_t.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

KINDS = ("logistic", "wgan-gp")


def default_d_reg_interval(kind: str) -> int:
    """D regularization interval when none is given: lazy R1 every 16 steps for the logistic
    loss (StyleGAN2), the gradient penalty every step for WGAN-GP (as it is usually trained)."""
    return 16 if kind == "logistic" else 1


@dataclass
class LossConfig:
    """Loss settings (defaults: stylegan2-ada-pytorch).

    Attributes:
        kind: "logistic" (non-saturating logistic + R1) or "wgan-gp" (critic loss + gradient
            penalty + drift).
        r1_gamma: R1 weight; the penalty is r1_gamma / 2 * |grad_x D(x)|^2 on reals.
            `default_r1_gamma(resolution, batch_size)` gives NVlabs' heuristic.
        pl_weight: path-length penalty weight (0 disables g_reg's penalty).
        pl_decay: decay of the running path-length mean.
        pl_batch_shrink: g_reg uses batch_size // pl_batch_shrink samples.
        style_mixing_prob: probability that a batch mixes two latents at a random crossover.
        wgan_gp_lambda: gradient penalty weight (wgan-gp).
        wgan_drift: weight of the drift term E[D(x_real)^2] that keeps critic scores near 0.
        g_reg_interval: g_reg is run (and weighted) every this many G steps.
        d_reg_interval: d_reg is run (and weighted) every this many D steps; None = 16 for
            logistic (lazy R1) and 1 for wgan-gp (the usual per-step gradient penalty).
    """

    kind: str = "logistic"
    r1_gamma: float = 1.0
    pl_weight: float = 2.0
    pl_decay: float = 0.01
    pl_batch_shrink: int = 2
    style_mixing_prob: float = 0.9
    wgan_gp_lambda: float = 10.0
    wgan_drift: float = 0.001
    g_reg_interval: int = 4
    d_reg_interval: Optional[int] = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.d_reg_interval is None:
            self.d_reg_interval = default_d_reg_interval(self.kind)
        for name in ("g_reg_interval", "d_reg_interval", "pl_batch_shrink"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("r1_gamma", "pl_weight", "wgan_gp_lambda", "wgan_drift"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.pl_decay <= 1:
            raise ValueError(f"pl_decay must be in [0, 1], got {self.pl_decay!r}")
        if not 0 <= self.style_mixing_prob <= 1:
            raise ValueError(f"style_mixing_prob must be in [0, 1], got {self.style_mixing_prob!r}")


def default_r1_gamma(resolution: int, batch_size: int) -> float:
    """NVlabs' heuristic R1 weight: 0.0002 * resolution^2 / batch_size (0.2048 at 256, batch 64)."""
    return 0.0002 * resolution**2 / batch_size


def lazy_optimizer_settings(
    lr: float, betas: tuple[float, float], reg_interval: int
) -> tuple[float, tuple[float, float]]:
    """Adam settings for a network regularized lazily every `reg_interval` steps.

    With lazy regularization the optimizer takes reg_interval + 1 steps per reg_interval
    minibatches; NVlabs compensates with lr * r and betas ** r, r = reg_interval /
    (reg_interval + 1). An interval of 1 (no lazy regularization) returns them unchanged.
    """
    if reg_interval <= 1:
        return lr, betas
    r = reg_interval / (reg_interval + 1)
    return lr * r, (betas[0] ** r, betas[1] ** r)


def r1_penalty(real_logits: torch.Tensor, real_img: torch.Tensor) -> torch.Tensor:
    """Per-sample squared gradient norm of the logits with respect to the images.

    Args:
        real_logits: [batch_size, 1], computed from real_img.
        real_img: [batch_size, channels, height, width], requires_grad.
    Returns:
        [batch_size] float32: |d real_logits[n] / d real_img[n]|^2 (the graph is kept, so the
        result can be backpropagated into D).
    """
    (grads,) = torch.autograd.grad(real_logits.sum(), real_img, create_graph=True)
    return grads.float().square().sum(dim=[1, 2, 3])


def path_length(fake_img: torch.Tensor, ws: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-sample path lengths |J_w^T y|, y ~ N(0, 1) / sqrt(height * width).

    Args:
        fake_img: [batch_size, channels, height, width] generated from ws.
        ws: [batch_size, num_ws, w_dim], part of the graph that made fake_img.
        noise: the y above, of fake_img's shape; None draws it (already divided by
            sqrt(height * width), so the length does not grow with the resolution).
    Returns:
        [batch_size]: sqrt(mean over the ws of the squared gradient norm per w), graph kept.
    """
    if noise is None:
        noise = torch.randn_like(fake_img) / math.sqrt(fake_img.shape[2] * fake_img.shape[3])
    (grads,) = torch.autograd.grad((fake_img * noise).sum(), ws, create_graph=True)
    return grads.square().sum(dim=2).mean(dim=1).sqrt()


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Within the block, the module's parameters do not require grad, so graphs built there
    do not reach them (their .grad stays untouched by a later backward)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class StyleGAN2Loss:
    """The four training phases for a Generator G and a Discriminator D (see the module docs).

    Inputs: z [batch_size, z_dim]; c / real_c [batch_size, c_dim] rows or [batch_size] labels,
    or None when unconditional; real_img [batch_size, channels, R, R] float in [-1, 1].
    State: `pl_mean` (a 0-d tensor on G's device); save and restore it with state_dict() /
    load_state_dict() to resume exactly.
    augment: applied to every image before D (a stylegan2.augment.Augment, or any callable
    images -> images; an `accumulate(real_logits)` method, when it has one, gets D's real logits
    of each d_main). None: D sees the images as they are.
    """

    def __init__(self, G: nn.Module, D: nn.Module, cfg: Optional[LossConfig] = None,
                 augment: Optional[Any] = None) -> None:
        self.G, self.D = G, D
        self.cfg = cfg if cfg is not None else LossConfig()
        self.augment = augment
        device = next(G.parameters()).device
        self.pl_mean = torch.zeros([], device=device)
        self.stats: dict[str, torch.Tensor] = {}

    # --- state for checkpoints ---------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"pl_mean": self.pl_mean.detach().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.pl_mean = state["pl_mean"].detach().to(device=self.pl_mean.device, dtype=torch.float32).clone()

    # --- shared pieces -----------------------------------------------------------------------

    def run_G(
        self, z: torch.Tensor, c: Optional[torch.Tensor], update_emas: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """z -> (img [N, C, R, R], ws [N, num_ws, w_dim]) with style mixing regularization.

        With probability style_mixing_prob the whole batch switches, from a random layer
        cutoff in [1, num_ws) on, to the ws of a second random z. The cutoff is drawn on the
        device and applied with a mask, so no value is read back to the host.
        """
        ws = self.G.mapping(z, c, update_emas=update_emas)
        if self.cfg.style_mixing_prob > 0:
            num_ws = ws.shape[1]
            cutoff = torch.randint(1, num_ws, [], device=ws.device)
            mixing = torch.rand([], device=ws.device) < self.cfg.style_mixing_prob
            cutoff = torch.where(mixing, cutoff, torch.full_like(cutoff, num_ws))
            ws2 = self.G.mapping(torch.randn_like(z), c, update_emas=False)
            take2 = torch.arange(num_ws, device=ws.device) >= cutoff
            ws = torch.where(take2[None, :, None], ws2, ws)
        return self.G.synthesis(ws), ws

    def run_D(self, img: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
        """D's logits for images, augmented first when there is an augmentation."""
        if self.augment is not None:
            img = self.augment(img)
        return self.D(img, c)

    def _stat(self, name: str, value: torch.Tensor) -> None:
        self.stats[name] = value.detach().float().mean()

    # --- phases ------------------------------------------------------------------------------

    def g_main(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Generator loss: mean softplus(-D(G(z))) (logistic) or -mean D(G(z)) (wgan-gp)."""
        with frozen(self.D):
            img, _ = self.run_G(z, c)
            logits = self.run_D(img, c)
        self._stat("scores/fake", logits)
        if self.cfg.kind == "logistic":
            loss = F.softplus(-logits).mean()
        else:
            loss = -logits.mean()
        self._stat("G/loss", loss)
        return loss

    def g_reg(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Path-length penalty, weighted by pl_weight * g_reg_interval; updates pl_mean.

        Uses the first batch_size // pl_batch_shrink samples. penalty = mean((|J^T y| - a)^2)
        where a = lerp(pl_mean, mean |J^T y|, pl_decay) is the updated running mean.
        """
        n = max(z.shape[0] // self.cfg.pl_batch_shrink, 1)
        z, c = z[:n], (c[:n] if c is not None else None)
        with frozen(self.D):
            img, ws = self.run_G(z, c)
            lengths = path_length(img, ws)
        if self.pl_mean.device != lengths.device:
            self.pl_mean = self.pl_mean.to(lengths.device)
        pl_mean = self.pl_mean.lerp(lengths.mean(), self.cfg.pl_decay)
        self.pl_mean.copy_(pl_mean.detach())
        penalty = (lengths - pl_mean).square()
        loss = penalty.mean() * (self.cfg.pl_weight * self.cfg.g_reg_interval)
        self._stat("pl/lengths", lengths)
        self._stat("pl/mean", self.pl_mean)
        self._stat("pl/penalty", penalty)
        self._stat("G/reg", loss)
        return loss

    def d_main(
        self,
        real_img: torch.Tensor,
        real_c: Optional[torch.Tensor],
        z: torch.Tensor,
        c: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Discriminator loss on a batch of reals and a batch of fakes made from z, c.

        logistic: mean softplus(D(fake)) + mean softplus(-D(real)).
        wgan-gp: mean D(fake) - mean D(real) + wgan_drift * mean D(real)^2.
        Generating the fakes updates G's w_avg (as stylegan3's loss does).
        """
        with torch.no_grad():
            fake_img, _ = self.run_G(z, c, update_emas=True)
        fake_logits = self.run_D(fake_img, c)
        real_logits = self.run_D(real_img.detach(), real_c)
        accumulate = getattr(self.augment, "accumulate", None)
        if accumulate is not None:
            accumulate(real_logits.detach())  # ADA's overfitting heuristic r_t
        self._stat("scores/fake", fake_logits)
        self._stat("scores/real", real_logits)
        if self.cfg.kind == "logistic":
            loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
        else:
            loss = fake_logits.mean() - real_logits.mean() + self.cfg.wgan_drift * real_logits.square().mean()
        self._stat("D/loss", loss)
        return loss

    def d_reg(
        self,
        real_img: torch.Tensor,
        real_c: Optional[torch.Tensor] = None,
        z: Optional[torch.Tensor] = None,
        c: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The discriminator's regularizer, weighted by d_reg_interval.

        logistic: R1 = r1_gamma / 2 * mean |grad_x D(x_real)|^2.
        wgan-gp: wgan_gp_lambda * mean (|grad_x D(x_hat)| - 1)^2 at x_hat = e * real +
            (1 - e) * fake, e ~ U(0, 1) per sample; the fakes come from z (drawn if None) with
            c (real_c if None).
        """
        interval = self.cfg.d_reg_interval
        if self.cfg.kind == "logistic":
            # The gradient is taken at the un-augmented reals, through the augmentation.
            x = real_img.detach().requires_grad_(True)
            logits = self.run_D(x, real_c)
            penalty = r1_penalty(logits, x)
            loss = penalty.mean() * (self.cfg.r1_gamma / 2 * interval)
            self._stat("r1/penalty", penalty)
        else:
            n = real_img.shape[0]
            if z is None:
                z = torch.randn([n, self.G.z_dim], device=real_img.device)
            with torch.no_grad():
                fake_img, _ = self.run_G(z, c if c is not None else real_c)
            penalty = gradient_penalty(self.run_D, real_img, fake_img, real_c)
            loss = penalty.mean() * (self.cfg.wgan_gp_lambda * interval)
            self._stat("gp/penalty", penalty)
        self._stat("D/reg", loss)
        return loss


def gradient_penalty(
    D: Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor],
    real_img: torch.Tensor,
    fake_img: torch.Tensor,
    c: Optional[torch.Tensor] = None,
    eps: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """WGAN-GP's per-sample penalty (|grad_x D(x_hat)|_2 - 1)^2 (Gulrajani et al. 2017).

    Args:
        D: (images, c) -> logits: the discriminator, or one that augments the images first.
        real_img, fake_img: [batch_size, channels, height, width].
        c: the condition for D, or None.
        eps: interpolation weights [batch_size, 1, 1, 1] in [0, 1]; None draws U(0, 1).
    Returns:
        [batch_size], graph kept for the backward into D.
    """
    if eps is None:
        eps = torch.rand([real_img.shape[0], 1, 1, 1], device=real_img.device)
    x_hat = torch.lerp(fake_img.detach().float(), real_img.detach().float(), eps).requires_grad_(True)
    logits = D(x_hat, c)
    (grads,) = torch.autograd.grad(logits.sum(), x_hat, create_graph=True)
    norms = torch.linalg.vector_norm(grads.flatten(1), dim=1)
    return (norms - 1).square()
