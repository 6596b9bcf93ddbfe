"""Shared test set-up: the `cuda` marker and per-test seeded random generators."""
from __future__ import annotations

import zlib

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU visible")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def one_intra_op_thread():
    """The suite's tensors are tiny: on a small (2-core) VM each multi-threaded op pays ~20 ms of
    thread wake-up, which made float64 gradchecks 10-100x slower than on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def seed_for(nodeid: str) -> int:
    """A seed derived from the test's id: reproducible, and different for every case."""
    return zlib.crc32(nodeid.encode())


@pytest.fixture
def gen(request: pytest.FixtureRequest) -> torch.Generator:
    """A CPU generator seeded from the test id. Draw on the CPU, then move to the device, so a
    failing case reproduces bit for bit on any machine."""
    return torch.Generator().manual_seed(seed_for(request.node.nodeid))
