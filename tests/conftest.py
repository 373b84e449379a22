import os
import random
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# the repository's benchmarks/ folder (scripts and the hand-written reference models, which are
# not part of the installed package) imports as ``benchmarks`` in the tests
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TINY = [4, 8, 16, 32, 64]  # widths that keep every zoo model fast on 2 CPU cores


@pytest.fixture
def tiny_widths():
    return list(TINY)


@pytest.fixture
def write_spec(tmp_path):
    """Write YAML text to a file and return its path."""
    def _write(text: str, name: str = "spec.yaml"):
        p = tmp_path / name
        p.write_text(text)
        return p
    return _write


@pytest.fixture
def one_thread():
    """One torch thread for the test (two threads on two busy cores are slower than one)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class RandomTrial:
    """Stands in for an Optuna trial: uniform choices from a seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.params: dict = {}

    def suggest_categorical(self, name, choices):
        self.params[name] = self.rng.choice(list(choices))
        return self.params[name]
