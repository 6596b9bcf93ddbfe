"""The ADA probability controller (Karras et al. 2020, section 3).

The overfitting heuristic r_t = E[sign(D(real))] is accumulated over the real logits of the
last `interval` steps; then p moves by sign(r_t - target) * (images since the last adjustment)
/ (ada_kimg * 1000), clamped to [0, 1]. So p can climb from 0 to 1 in ada_kimg thousand images
(500 kimg by default), and falls at the same rate when D is no longer overconfident.

Everything that depends on D's outputs stays on the device (p, the sum of signs, the last r_t),
so a training step never waits for the host; the counters that only depend on the schedule
(steps, images, logits seen) are host integers. p and the sum are float64, so counts and the
fixed-size adjustments add up exactly and a resumed run continues bit for bit.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch


class AdaController:
    """Adjusts the augmentation probability p from the discriminator's real logits.

    Use per training step:
        ctrl.accumulate(real_logits)   # any number of times: every D pass over reals
        ctrl.step(batch_size)          # once, after the step; adjusts p every `interval` steps

    Args:
        target: the r_t that p steers toward (0.6 in the paper).
        interval: steps between adjustments (4).
        ada_kimg: thousands of images for p to go from 0 to 1 (500).
        p: the initial p.
        device: where p and the accumulators live (the logits' device).
    """

    kind = "ada"

    def __init__(
        self, target: float = 0.6, interval: int = 4, ada_kimg: float = 500, p: float = 0.0,
        device: Union[torch.device, str] = "cpu",
    ) -> None:
        if not 0 <= target <= 1:
            raise ValueError(f"target must be in [0, 1], got {target!r}")
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f"interval must be an int >= 1, got {interval!r}")
        if not ada_kimg > 0:
            raise ValueError(f"ada_kimg must be > 0, got {ada_kimg!r}")
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p!r}")
        self.target, self.interval, self.ada_kimg = float(target), interval, float(ada_kimg)
        self.device = torch.device(device)
        self.p = torch.full([], float(p), dtype=torch.float64, device=self.device)
        self.rt = torch.zeros([], dtype=torch.float64, device=self.device)  # last measured r_t
        self.rt_measured = False  # host flag: whether rt holds a measurement yet
        self._sign_sum = torch.zeros([], dtype=torch.float64, device=self.device)
        self._count = 0  # logits accumulated since the last adjustment
        self._steps = 0  # steps since the last adjustment
        self._nimg = 0  # images since the last adjustment
        # Under torchrun: an in-place sum over ranks of a float64 tensor (training/distributed.py
        # sets it). Called only at an adjustment, so the steps between need no collective.
        self.reduce_sum: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
        self.adjustments = 0  # adjustments made (host)

    def to(self, device: Union[torch.device, str]) -> "AdaController":
        """Moves p and the accumulators (values unchanged)."""
        self.device = torch.device(device)
        self.p, self.rt, self._sign_sum = (t.to(self.device) for t in (self.p, self.rt, self._sign_sum))
        return self

    @property
    def speed(self) -> float:
        """The change in p per image: 1 / (ada_kimg * 1000)."""
        return 1.0 / (self.ada_kimg * 1000)

    def accumulate(self, real_logits: torch.Tensor) -> None:
        """Adds the signs of D's logits for real images (any shape) to r_t's running mean."""
        logits = real_logits.detach()
        if logits.device != self.device:
            self.to(logits.device)
        self._sign_sum += logits.sign().to(torch.float64).sum()
        self._count += logits.numel()

    def step(self, num_images: int) -> None:
        """Ends a training step of num_images images; every `interval` steps, adjusts p."""
        self._steps += 1
        self._nimg += int(num_images)
        if self._steps < self.interval:
            return
        if self._count > 0:  # nothing to measure (no real pass) means no evidence to move p
            sign_sum, count = self._sign_sum, self._count
            if self.reduce_sum is not None:  # every rank's logits, so p moves alike on all of them
                both = torch.stack([sign_sum, torch.full_like(sign_sum, float(count))])
                sign_sum, count = self.reduce_sum(both).unbind()
            rt = sign_sum / count
            adjust = torch.sign(rt - self.target) * (self._nimg * self.speed)
            self.p = torch.clamp(self.p + adjust, 0.0, 1.0)
            self.rt = rt
            self.rt_measured = True
            self.adjustments += 1
        self._sign_sum = torch.zeros_like(self._sign_sum)
        self._count = self._steps = self._nimg = 0

    def stats(self) -> dict[str, torch.Tensor]:
        """Device tensors for the training stats: Aug/p, and Aug/rt once it has been measured."""
        out = {"Aug/p": self.p.float()}
        if self.rt_measured:
            out["Aug/rt"] = self.rt.float()
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (tensors and plain numbers: loads with
        torch.load(weights_only=True))."""
        return {
            "p": self.p.detach().clone(), "rt": self.rt.detach().clone(), "rt_measured": self.rt_measured,
            "sign_sum": self._sign_sum.detach().clone(), "count": self._count, "steps": self._steps,
            "nimg": self._nimg, "adjustments": self.adjustments,
            "target": self.target, "interval": self.interval, "ada_kimg": self.ada_kimg,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores p and the accumulators. The settings (target, interval, ada_kimg) stay the
        ones this controller was built with, so a resumed run may change them on purpose."""
        missing = {"p", "rt", "sign_sum", "count", "steps", "nimg"} - set(state)
        if missing:
            raise ValueError(f"AdaController state lacks {', '.join(sorted(missing))}")
        as_f64 = dict(dtype=torch.float64, device=self.device)
        self.p = torch.as_tensor(state["p"]).detach().to(**as_f64).clone()
        self.rt = torch.as_tensor(state["rt"]).detach().to(**as_f64).clone()
        self._sign_sum = torch.as_tensor(state["sign_sum"]).detach().to(**as_f64).clone()
        self.rt_measured = bool(state.get("rt_measured", True))
        self._count, self._steps, self._nimg = int(state["count"]), int(state["steps"]), int(state["nimg"])
        self.adjustments = int(state.get("adjustments", 0))
