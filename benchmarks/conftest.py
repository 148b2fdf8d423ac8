"""The pytest-benchmark suite runs on demand only, never in `make test`:

    pytest benchmarks --benchmark-only                       # run, print the table
    pytest benchmarks --benchmark-only --benchmark-autosave  # save under .benchmarks/
    pytest benchmarks --benchmark-only --benchmark-compare   # compare with the last save

(or set COMPACT_BILINEAR_BENCH=1). Without either, its tests are collected and skipped.
"""
import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_only", default=False) or os.environ.get(
            "COMPACT_BILINEAR_BENCH"):
        return
    skip = pytest.mark.skip(reason="benchmarks run on demand: pytest benchmarks --benchmark-only")
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)
