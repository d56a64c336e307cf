"""Example boltzbench plugin (docs/adding-a-sampler.md): the unadjusted Langevin algorithm."""
from .sampler import ULA

__all__ = ["ULA"]
