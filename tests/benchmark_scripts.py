"""The scripts in benchmarks/ as modules, for their tests."""

import importlib
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name):
    # The benchmarks are scripts, not a package, and some import each other
    # (paired_settings imports paper_tables): their folder goes on the path.
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))
