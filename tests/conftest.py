"""Test-wide settings: offline hubs, a per-test time budget, few threads."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# The brief's budget: 20 s per test, 90 s for tests marked slow. A test that sets its own
# @pytest.mark.timeout keeps it.
FAST_TIMEOUT_S = 20
SLOW_TIMEOUT_S = 90


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("timeout") is not None:
            continue
        limit = SLOW_TIMEOUT_S if item.get_closest_marker("slow") else FAST_TIMEOUT_S
        item.add_marker(pytest.mark.timeout(limit))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is not None:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
