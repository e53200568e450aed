"""Shared fixtures: the chapter's thermometer data and paths to shared reference material."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

#: The suite is a gate, so its property tests draw the same examples on every run ("suite"); a
#: search for new failing examples is ``make fuzz`` (``GRADFIT_HYPOTHESIS=explore``).
settings.register_profile("suite", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("GRADFIT_HYPOTHESIS", "suite"))

T_C = np.array([0.5, 14.0, 15.0, 28.0, 11.0, 8.0, 3.0, -4.0, 6.0, 13.0, 21.0])
T_U = np.array([35.7, 55.9, 58.2, 81.9, 56.3, 48.9, 33.9, 21.8, 48.4, 60.4, 68.4])

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def cuda_available() -> bool:
    """Whether a CUDA device can be used (imports torch)."""
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` where no CUDA device exists."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and not cuda_available():
        skip = pytest.mark.skip(reason="no CUDA device")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture
def thermometer() -> tuple[np.ndarray, np.ndarray]:
    """The chapter's readings: (t_u, t_c)."""
    return T_U.copy(), T_C.copy()


@pytest.fixture
def thermometer_csv(tmp_path: Path) -> Path:
    """The readings as a CSV file with columns t_c, t_u."""
    path = tmp_path / "thermometer.csv"
    rows = "\n".join(f"{c},{u}" for c, u in zip(T_C, T_U))
    path.write_text("t_c,t_u\n" + rows + "\n")
    return path
