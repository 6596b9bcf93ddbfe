"""A memo for the factories that build one autograd Function class per static configuration.

functools.lru_cache would do on its own, but torch.compile's dynamo ignores lru_cache wrappers
and traces the wrapped factory itself, and creating a class is something it cannot trace: every
op call would become a graph break. A plain dict lookup traces fine (dynamo guards on the dict),
so once a configuration has run eagerly, compiled code reuses its class as a constant.
"""
from __future__ import annotations

import functools
import threading
from typing import Callable, TypeVar

T = TypeVar("T")

_lock = threading.Lock()


def function_cache(make: Callable[..., T]) -> Callable[..., T]:
    """make(*key) -> value, built once per key (positional, hashable arguments only)."""
    cache: dict[tuple, T] = {}

    @functools.wraps(make)
    def get(*key: object) -> T:
        value = cache.get(key)
        if value is None:
            with _lock:  # two threads must not build two classes for one configuration
                value = cache.get(key)
                if value is None:
                    value = cache[key] = make(*key)
        return value

    get.cache = cache  # type: ignore[attr-defined]  # for tests and debugging
    return get
