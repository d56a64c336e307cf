"""iDEM's replay buffer: a FIFO ring of fixed capacity, sampled uniformly with replacement.

Matches the official ``SimpleBuffer`` with ``prioritize: false`` and
``sample_with_replacement: True`` (reference-idem.md §4.5): capacity 10,000, sampling allowed once
at least ``min_size`` (1,000) entries were ever added. Entries are samples in the sampler's
training coordinates. The official buffer also stores each sample's log p~ (one energy evaluation
per insertion), used only for logging and for the prioritised mode that is off; we store none.
"""
from __future__ import annotations

import torch


class ReplayBuffer:
    """``add(x [n, dim])``; ``sample(b, generator) -> [b, dim]``; ``len(buffer)``."""

    def __init__(self, dim: int, capacity: int = 10_000, min_size: int = 1_000,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        if capacity < 1 or not 0 <= min_size <= capacity:
            raise ValueError(f"ReplayBuffer: need capacity >= 1 and 0 <= min_size <= capacity, "
                             f"got capacity={capacity}, min_size={min_size}")
        self.capacity, self.min_size = int(capacity), int(min_size)
        self.x = torch.zeros(capacity, dim, device=device, dtype=dtype)
        self.ptr = 0            # next write position
        self.size = 0           # valid entries (<= capacity)
        self.n_added = 0        # total ever added

    def __len__(self) -> int:
        return self.size

    @property
    def can_sample(self) -> bool:
        return self.n_added >= self.min_size and self.size > 0

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.x.shape[1]:
            raise ValueError(f"ReplayBuffer.add: x must be [n, {self.x.shape[1]}], got {tuple(x.shape)}")
        n = x.shape[0]
        if n >= self.capacity:  # only the newest `capacity` survive
            x, n = x[-self.capacity:], self.capacity
        idx = (torch.arange(n, device=self.x.device) + self.ptr) % self.capacity
        self.x[idx] = x.to(self.x)
        self.ptr = (self.ptr + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        self.n_added += n

    @torch.no_grad()
    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """``batch`` entries drawn uniformly with replacement (``generator`` on the buffer's device)."""
        if not self.can_sample:
            raise RuntimeError(f"ReplayBuffer.sample: {self.n_added} entries added, need at least "
                               f"min_size={self.min_size} before sampling")
        idx = torch.randint(self.size, (batch,), generator=generator, device=self.x.device)
        return self.x[idx]

    def last(self, n: int) -> torch.Tensor:
        """The ``n`` most recent entries ``[min(n, len), dim]`` (oldest first)."""
        n = min(n, self.size)
        idx = (torch.arange(-n, 0, device=self.x.device) + self.ptr) % self.capacity
        return self.x[idx]

    def state_dict(self) -> dict:
        # While not full the valid entries are exactly x[:size].
        return {"x": self.x[: self.size].cpu(), "ptr": self.ptr, "size": self.size,
                "n_added": self.n_added}

    def load_state_dict(self, state: dict) -> None:
        self.x[: state["x"].shape[0]] = state["x"].to(self.x)
        self.ptr, self.size, self.n_added = state["ptr"], state["size"], state["n_added"]
