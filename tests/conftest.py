import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

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
