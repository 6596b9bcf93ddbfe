"""One object the training loop holds, whatever the kind of augmentation.

    aug = make_augment(cfg.aug, num_channels=C, p=cfg.aug_p, target=cfg.target, ada_kimg=...)
    ...  D(aug(real_img)), D(aug(fake_img))     # in every D and G pass, reals and fakes alike
    aug.accumulate(real_logits)                 # after a D pass over reals (ADA's r_t)
    aug.step(batch_size)                        # once per training step (ADA adjusts p)
    acc.add_all("", aug.stats())                # Aug/p, Aug/rt as device tensors
    ckpt["augment"] = aug.state_dict(); aug.load_state_dict(ckpt["augment"])

Every method exists for every kind (the ones that do not apply do nothing), so the loop needs no
branches on the kind.
"""
from __future__ import annotations

from typing import Any, Optional, Union

import torch

from .ada import GEOMETRIC, AdaPipeline, pipe_strengths
from .controller import AdaController
from .diffaugment import DiffAugment

KINDS = ("ada", "diffaugment", "fixed", "none")
# The fixed p of ADA's pipeline from which the leak check's CPU runs (32x32) kept turned heads:
# at 0.6 a share 0.13 above the reals' still lay turned at 60 kimg (heads tilted 20-30 degrees),
# at 0.8 a share 0.56 above, off-centre too; at 0.4 the share was the reals' again by 60 kimg.
LEAKY_FIXED_P = 0.6
# ADA's p from which its warning speaks: the ADA paper's bound for leaks on its models. Lower
# would warn on most long runs of small sets, where p of 0.5-0.7 is ordinary.
LEAKY_ADA_P = 0.8


class Augment:
    """What make_augment() returns. Attributes: kind, pipeline (AdaPipeline, DiffAugment or
    None), controller (AdaController for 'ada', else None)."""

    def __init__(
        self, kind: str, pipeline: Union[AdaPipeline, DiffAugment, None] = None,
        controller: Optional[AdaController] = None, p: float = 0.0,
        device: Union[torch.device, str] = "cpu",
    ) -> None:
        self.kind, self.pipeline, self.controller = kind, pipeline, controller
        self._fixed_p = float(p)  # 'fixed' only
        self._warned_high_p = False  # 'ada': tick_caution() has spoken
        # Where 'fixed' reports its p: the stats accumulator stacks every value on one device.
        self.device = torch.device(device)

    @property
    def p(self) -> Union[torch.Tensor, float, None]:
        """The current probability: a device tensor for 'ada', a number for 'fixed', else None."""
        if self.controller is not None:
            return self.controller.p
        return self._fixed_p if self.kind == "fixed" else None

    def describe(self) -> str:
        """One line for logs, including what is skipped and why."""
        if self.kind == "none":
            return "no augmentation"
        text = self.pipeline.describe()
        if self.kind == "ada":
            c = self.controller
            text += f"; adaptive p (target {c.target}, every {c.interval} steps, 0->1 in {c.ada_kimg:g} kimg)"
        elif self.kind == "fixed":
            text += f"; fixed p = {self._fixed_p:g}"
        return text

    def caution(self) -> Optional[str]:
        """A warning for logs when the settings are known to distort the fakes, else None."""
        if self.kind == "fixed" and self._geometric_on() and self._fixed_p >= LEAKY_FIXED_P:
            return (f"fixed p = {self._fixed_p:g} with geometric transforms: from p = {LEAKY_FIXED_P:g} the leak "
                    f"check's runs still drew turned heads after 60 kimg (README, leak check); --aug ada raises p "
                    f"only as far as D's overfitting needs")
        return None

    def tick_caution(self, p: Optional[float]) -> Optional[str]:
        """For 'ada', called at each tick with the tick's mean p: a warning the first time p
        reaches LEAKY_ADA_P with geometric transforms on, else None. ADA raises p as far as D
        overfits, and on a very small set that can be past where leaks begin."""
        if self.kind != "ada" or self._warned_high_p or p is None or p < LEAKY_ADA_P or not self._geometric_on():
            return None
        self._warned_high_p = True
        return (f"ADA's p reached {p:.2f}: from p = {LEAKY_ADA_P:g} the ADA paper saw leaks, and the leak "
                f"check's runs drew turned or off-centre heads (README, leak check); watch the fake grids, and "
                f"compare them with python -m benchmarks.aug_leak_check")

    def _geometric_on(self) -> bool:
        """Whether ADA's pipeline runs any geometric transform (what can turn or move a head)."""
        return any(self.pipeline.strength.get(k, 0) > 0 for k in GEOMETRIC)

    @property
    def skipped(self) -> dict[str, str]:
        return dict(getattr(self.pipeline, "skipped", {}) or {})

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """x: [N, C, H, W] -> augmented [N, C, H, W] (x itself when nothing can change it)."""
        if self.kind == "none":
            return x
        if self.kind == "diffaugment":
            return self.pipeline(x, generator=generator)
        if self.controller is not None and self.controller.device != x.device:
            self.controller.to(x.device)  # p must sit where the gates are drawn
        return self.pipeline(x, self.p, generator=generator)

    def accumulate(self, real_logits: torch.Tensor) -> None:
        """Feeds D's real logits to ADA's heuristic (no-op for other kinds)."""
        if self.controller is not None:
            self.controller.accumulate(real_logits)

    def step(self, num_images: int) -> None:
        """Ends a training step (ADA adjusts p every interval; no-op for other kinds)."""
        if self.controller is not None:
            self.controller.step(num_images)

    def stats(self) -> dict[str, torch.Tensor]:
        """Values to log: Aug/p (and Aug/rt for ADA once measured); empty for diffaugment/none."""
        if self.controller is not None:
            return self.controller.stats()
        if self.kind == "fixed":
            # A fill on the training device: no host-to-device copy per step.
            return {"Aug/p": torch.full([], self._fixed_p, device=self.device)}
        return {}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"kind": self.kind}
        if self.controller is not None:
            state["controller"] = self.controller.state_dict()
        if self.kind == "fixed":
            state["p"] = self._fixed_p
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores ADA's p and accumulators. A state saved under another kind is an error: the
        run's options chose the kind, and silently dropping ADA's p is what this guards against."""
        if state.get("kind") != self.kind:
            raise ValueError(f"augmentation state is for {state.get('kind')!r}, this run uses {self.kind!r}")
        if self.controller is not None:
            self.controller.load_state_dict(state["controller"])
            # A run resumed past the leaky range warned when it got there (tick_caution): once.
            self._warned_high_p = float(self.controller.p) >= LEAKY_ADA_P


def make_augment(
    kind: str,
    *,
    num_channels: int = 1,
    p: Optional[float] = None,
    target: float = 0.6,
    ada_kimg: float = 500,
    interval: int = 4,
    device: Union[torch.device, str] = "cpu",
    policy: str = "color,translation,cutout",
    pipe: str = "bgc",
    **pipeline_kwargs: Any,
) -> Augment:
    """Builds the augmentation for `train --aug KIND`.

    Args:
        kind: 'ada' (bgc with p adapted from D's overfitting), 'fixed' (bgc with p fixed: p
            required), 'diffaugment' (always-on translation, cutout, colour) or 'none'.
        num_channels: the images' channels (1 for grayscale MRI).
        p: 'fixed': the probability; 'ada': the initial one (default 0).
        target, ada_kimg, interval: ADA's controller settings.
        device: where ADA's p lives (the training device).
        policy: DiffAugment's transforms.
        pipe: 'ada' and 'fixed': which of ADA's groups run, one of PIPES ('bgc': blitting,
            general geometry and colour, the paper's default; 'bg', 'c', ...: a subset).
        pipeline_kwargs: passed to AdaPipeline (strengths and ranges) for 'ada' and 'fixed'.
    """
    if kind not in KINDS:
        raise ValueError(f"augmentation kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind in ("diffaugment", "none") and (p is not None or pipeline_kwargs or pipe != "bgc"):
        raise ValueError(f"--aug {kind} takes no p or ADA pipeline settings")
    if kind == "none":
        return Augment("none")
    if kind == "diffaugment":
        return Augment("diffaugment", DiffAugment(policy, num_channels=num_channels))
    pipeline = AdaPipeline(num_channels, **{**pipe_strengths(pipe), **pipeline_kwargs})
    if kind == "fixed":
        if p is None or not 0 <= p <= 1:
            raise ValueError(f"--aug fixed needs a p in [0, 1] (--aug-p), got {p!r}")
        return Augment("fixed", pipeline, p=p, device=device)
    controller = AdaController(target=target, interval=interval, ada_kimg=ada_kimg, p=p or 0.0, device=device)
    return Augment("ada", pipeline, controller)
