"""A toy dataset whose worker processes come to a chosen end (imported by the workers too)."""

from __future__ import annotations

import os
import signal
from typing import Any

import torch

__all__ = ["WorkerHazard"]


def _kill(sig: signal.Signals) -> None:
    os.kill(os.getpid(), sig)


# what a worker does at the hazardous sample; never in the process that built the dataset
ENDINGS = {
    "sigkill": lambda: _kill(signal.SIGKILL),  # the OOM killer, kill -9
    "sigbus": lambda: _kill(signal.SIGBUS),  # a write into a full /dev/shm
    "exit7": lambda: os._exit(7),  # a library calling exit
}


class WorkerHazard:
    """``size`` small uint8 images; in a worker, sample ``at`` ends the worker as ``ending`` says."""

    def __init__(self, size: int = 16, at: int = 5, ending: str = "sigkill", side: int = 4) -> None:
        if ending not in ENDINGS:
            raise ValueError(f"unknown ending {ending!r}; expected one of {sorted(ENDINGS)}")
        self.size, self.at, self.ending, self.side = size, at, ending, side
        self.owner = os.getpid()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if i == self.at and os.getpid() != self.owner:
            ENDINGS[self.ending]()
        return torch.full((1, self.side, self.side), i % 256, dtype=torch.uint8), {"image_id": i}
