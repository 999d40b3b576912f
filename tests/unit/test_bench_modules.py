"""Every benchmark under tests/bench still imports against today's code.

The benchmarks are run by hand, not by the suite, so an API they use can move without
any test noticing (tests/bench/gating.py kept importing ``ImagingFunctions`` for a
session after it was removed). Importing each module runs no benchmark: each one
starts its work only under ``if __name__ == "__main__"``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
MODULES = sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "__init__")


def test_there_are_benchmarks_to_check() -> None:
    assert {"ingest", "default_study", "anatomy", "gating"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_benchmark_module_imports(name: str) -> None:
    module = importlib.import_module(f"tests.bench.{name}")
    assert callable(getattr(module, "main", None)), f"tests/bench/{name}.py has no main()"


def test_the_ingest_benchmark_times_fresh_memory_per_page() -> None:
    """The first-touch figure printed with the ingest results: each page written once, timed."""
    from tests.bench.ingest import first_touch_us_per_page

    per_page = first_touch_us_per_page(megabytes=16)
    assert 0.0 < per_page < 1000.0  # a page fault is microseconds, not a millisecond
