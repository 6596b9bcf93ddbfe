"""Shared test set-up: the `cuda` marker and per-test seeded random generators."""
from __future__ import annotations

import shutil
import subprocess
import zlib
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch

from stylegan2_ops import _toolchain

CSRC = Path(__file__).resolve().parent.parent / "csrc"


# Where the kernel tests run: on a GPU ("cuda", skipped without one), and on the CPU emulator of
# csrc/ (tests/emulator/) in two thread orders, so a missing barrier fails in at least one.
KERNEL_DEVICES = [
    pytest.param("cuda", marks=pytest.mark.cuda),
    pytest.param("emu-forward", marks=pytest.mark.emulator),
    pytest.param("emu-reverse", marks=pytest.mark.emulator),
]


@pytest.fixture(scope="session")
def emulator_library() -> Path:
    """The emulated kernels' library (built once, cached across runs); skips without a compiler
    or the CUDA headers."""
    from emulator import EmulatorBuildError, build_kernels

    try:
        return build_kernels()
    except EmulatorBuildError as e:
        if "not found" in str(e):
            pytest.skip(f"the CPU emulator cannot be built here: {e}")
        raise


@pytest.fixture(params=KERNEL_DEVICES)
def kdev(request: pytest.FixtureRequest) -> Iterator[str]:
    """The device a kernel test puts its tensors on: 'cuda', or 'cpu' with stylegan2_ops' impl='cuda'
    routed to the emulated kernels resuming threads in the parameter's order."""
    if request.param == "cuda":
        yield "cuda"
        return
    from emulator import emulated_kernels, routed

    request.getfixturevalue("emulator_library")
    order = request.param.split("-", 1)[1]
    with routed(emulated_kernels(order, seed=seed_for(request.node.nodeid))):
        yield "cpu"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--sweep", action="store_true",
                     help="run the kernel tests' GPU-sized cases on the CPU emulator too (minutes more)")


@pytest.fixture
def sweep(request: pytest.FixtureRequest) -> bool:
    """Whether --sweep asked for the larger emulated cases."""
    return bool(request.config.getoption("--sweep"))


NO_GPU_REASON = "no CUDA GPU visible"


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """One line for the `cuda` tests skipped without a GPU (they are hundreds), then the other
    skip reasons grouped with their counts: pyproject's -r flags leave skips out of pytest's own
    summary, which listed one line per skipped test location."""
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    if not reasons:
        return
    terminalreporter.section("skipped", sep="-")
    gpu = reasons.pop(NO_GPU_REASON, 0)
    if gpu:
        terminalreporter.write_line(f"{gpu} `cuda` tests skipped: {NO_GPU_REASON} (they run on a GPU machine; "
                                    "the kernels also ran on the CPU emulator, the `emu-` ids)")
    for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{count} skipped: {reason}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_GPU_REASON)
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def process_threads() -> Iterator[None]:
    """The process's intra-op thread count, given back when the session ends."""
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def one_thread(process_threads: None) -> None:
    """Every test starts on one intra-op thread, whatever an earlier test (or a command it ran)
    set. Bitwise comparisons (exact resume, ranks against one process) need a fixed count, and the
    suite's tensors are tiny: on a small (2-core) VM each multi-threaded op pays ~20 ms of thread
    wake-up, which made float64 gradchecks 10-100x slower than on one thread."""
    torch.set_num_threads(1)


def seed_for(nodeid: str) -> int:
    """A seed derived from the test's id: reproducible, and different for every case."""
    return zlib.crc32(nodeid.encode())


@pytest.fixture(autouse=True)
def private_dataset_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty dataset cache: every dataset kind is cached, so without this
    the suite would fill the user's ~/.cache/stylegan2 and tests could see each other's files."""
    folder = tmp_path_factory.mktemp("dataset-cache")
    monkeypatch.setenv("STYLEGAN2_CACHE", str(folder))
    return folder


@pytest.fixture
def gen(request: pytest.FixtureRequest) -> torch.Generator:
    """A CPU generator seeded from the test id. Draw on the CPU, then move to the device, so a
    failing case reproduces bit for bit on any machine."""
    return torch.Generator().manual_seed(seed_for(request.node.nodeid))


@pytest.fixture(scope="session")
def build_host_harness(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Path]:
    """Compiles a tests/kernel_harness/*.cpp program (kernel per-thread code run on the CPU) with
    the host C++ compiler; skips when there is no compiler or no CUDA headers to include."""

    def build(source: Path, opt: str = "-O2") -> Path:
        cxx = shutil.which("g++") or shutil.which("c++")
        cuda_home, _ = _toolchain.find_cuda_home()
        include = Path(cuda_home) / "include" if cuda_home else None
        if cxx is None or include is None or not (include / "cuda_runtime.h").exists():
            pytest.skip("needs a C++ compiler and the CUDA headers (the kernel headers include cuda_runtime.h)")
        exe = tmp_path_factory.mktemp(source.stem) / source.stem
        cmd = [cxx, "-std=c++17", opt, "-Wall", "-Wno-unknown-pragmas", "-Werror", f"-I{CSRC}",
               f"-I{include}", str(source), "-o", str(exe)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, f"harness build failed:\n{done.stderr}"
        return exe

    return build
