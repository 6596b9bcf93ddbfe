"""The once-per-process kernel self-check that impl='auto' consults before trusting a kernel."""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

from stylegan2_ops import _bias_act, _dispatch, _loader, _selfcheck

CUDA0 = torch.device("cuda", 0)


@pytest.fixture
def fresh(monkeypatch):
    """No results yet, only the checks a test registers, and a module that has every kernel."""
    monkeypatch.setattr(_selfcheck, "_RESULTS", {})
    monkeypatch.setattr(_selfcheck, "_CHECKS", {})
    monkeypatch.delenv(_selfcheck.ENV_SELFCHECK, raising=False)
    module = SimpleNamespace(bias_act_forward=object())
    monkeypatch.setattr(_loader, "load", lambda force_build=False: module)
    monkeypatch.setattr(_loader, "kernel", lambda name: getattr(module, name, None))
    return _selfcheck


def fake_cuda(dtype=torch.float32):
    return SimpleNamespace(is_cuda=True, dtype=dtype, device=CUDA0)


def test_failed_check_sends_auto_to_reference_with_one_warning(fresh):
    calls = []

    def broken(device, dtype):
        calls.append((device, dtype))
        raise AssertionError("y differs from the reference by 0.5")

    fresh.register("bias_act_forward", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert _dispatch.choose("bias_act", "auto", "bias_act_forward", {"x": fake_cuda()}) == "ref"
    assert calls == [(CUDA0, torch.float32)], "the check runs once per op, dtype and device"
    assert len(caught) == 1 and "failed its self-check" in str(caught[0].message)
    assert "differs from the reference by 0.5" in str(caught[0].message)
    # impl='cuda' is never second-guessed: tests and benchmarks see the raw kernel.
    assert _dispatch.choose("bias_act", "cuda", "bias_act_forward", {"x": fake_cuda()}) == "cuda"


def test_passing_check_is_cached_per_dtype(fresh):
    calls = []
    fresh.register("bias_act_forward", lambda device, dtype: calls.append(dtype))
    for dtype in (torch.float16, torch.float16, torch.bfloat16):
        assert _dispatch.choose("bias_act", "auto", "bias_act_forward", {"x": fake_cuda(dtype)}) == "cuda"
    assert calls == [torch.float16, torch.bfloat16]


def test_env_switch_and_unchecked_kernels(fresh, monkeypatch):
    fresh.register("bias_act_forward", lambda device, dtype: 1 / 0)
    monkeypatch.setenv(_selfcheck.ENV_SELFCHECK, "0")
    assert fresh.kernel_trusted("bias_act_forward", torch.float32, CUDA0)
    monkeypatch.delenv(_selfcheck.ENV_SELFCHECK)
    assert fresh.kernel_trusted("no_check_registered", torch.float32, CUDA0)
    with pytest.warns(RuntimeWarning, match="ZeroDivisionError"):
        assert not fresh.kernel_trusted("bias_act_forward", torch.float32, CUDA0)


def test_assert_close_tolerances():
    want = torch.linspace(-3, 3, 50)
    _selfcheck.assert_close("op", "y", want + 1e-4, want, torch.float32)
    with pytest.raises(AssertionError, match="y differs"):
        _selfcheck.assert_close("op", "y", want + 0.05, want, torch.float32)
    with pytest.raises(AssertionError, match="differs"):
        _selfcheck.assert_close("op", "y", want * float("nan"), want, torch.bfloat16)
    with pytest.raises(AssertionError, match="shape"):
        _selfcheck.assert_close("op", "y", want[:-1], want, torch.float16)


def route_cuda_to(monkeypatch, perturb_dtype=None):
    """Run each registered check on the CPU: impl='cuda' takes the reference path (the 'kernel'),
    optionally perturbed for inputs of one dtype, which only the kernel side of a check uses."""
    monkeypatch.setattr(_dispatch, "choose", lambda op, impl, name, tensors, unsupported=None: "ref")
    if perturb_dtype is not None:
        real = _bias_act.bias_act_ref

        def wrong(x, *args):
            y = real(x, *args)
            return y + 0.25 if x.dtype == perturb_dtype else y

        monkeypatch.setattr(_bias_act, "bias_act_ref", wrong)


@pytest.mark.parametrize("kernel", ["bias_act_forward", "upfirdn2d", "modconv_epilogue"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_registered_checks_run_end_to_end(monkeypatch, kernel, dtype):
    route_cuda_to(monkeypatch)
    _selfcheck._CHECKS[kernel](torch.device("cpu"), dtype)  # agrees with itself: no error


def test_bias_act_check_catches_a_wrong_kernel(monkeypatch):
    route_cuda_to(monkeypatch, perturb_dtype=torch.bfloat16)
    with pytest.raises(AssertionError, match="bias_act: y"):
        _selfcheck._CHECKS["bias_act_forward"](torch.device("cpu"), torch.bfloat16)


def test_check_runs_with_autograd_even_under_inference_mode(fresh):
    """A first call under torch.inference_mode() (e.g. generating images) must not make the check
    fail for want of autograd and distrust a good kernel for the rest of the process (review R2)."""

    def needs_autograd(device, dtype):
        x = torch.randn(3).requires_grad_(True)
        (g,) = torch.autograd.grad((x * 2).sum(), x)
        assert torch.equal(g, torch.full((3,), 2.0))

    fresh.register("bias_act_forward", needs_autograd)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.inference_mode():
            assert _dispatch.choose("bias_act", "auto", "bias_act_forward", {"x": fake_cuda()}) == "cuda"
