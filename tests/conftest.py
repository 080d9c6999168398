"""Shared test settings: one torch thread per test process (2-core CI machines), and the
guard that keeps the fast layer fast: only tests marked ``snakemake`` may start Snakemake."""

import os

import pytest
import torch

torch.set_num_threads(1)

SNAKEMAKE_ALLOWED = "MEDMARK_TEST_MAY_START_SNAKEMAKE"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Set before the item's fixtures (module-scoped ones included) run.
    if item.get_closest_marker("snakemake") is not None:
        os.environ[SNAKEMAKE_ALLOWED] = "1"
    else:
        os.environ.pop(SNAKEMAKE_ALLOWED, None)


def pytest_runtest_teardown(item: pytest.Item) -> None:
    os.environ.pop(SNAKEMAKE_ALLOWED, None)
