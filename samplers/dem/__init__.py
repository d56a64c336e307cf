"""Building blocks of DEM / iDEM (Akhound-Sadegh et al., ICML 2024): pure functions of tensors,
parameters and a generator; the sampler classes live in :mod:`samplers.idem`.

* :mod:`.schedule` geometric VE noise schedule g(t), h(t)
* :mod:`.estimator` K-sample MC score estimator and score-norm clipping
* :mod:`.loss` DEM regression loss and lambda(t)
* :mod:`.networks` sinusoidal MLP (GMM-40) and dense EGNN (particle targets)
* :mod:`.sde` reverse-SDE Euler-Maruyama and negative-time ascent
* :mod:`.buffer` FIFO replay buffer
* :mod:`.space` training coordinates (GMM-40's 1/50 scaling, mean removal)
* :mod:`.config` the Config dataclass and the per-target paper defaults
"""
from .buffer import ReplayBuffer
from .config import PAPER_DEFAULTS, DEMConfig, resolve
from .estimator import clip_norm, mc_score
from .loss import dem_loss, lambda_weight
from .networks import EGNN, ScoreMLP, build_network, init_parameters
from .schedule import GeometricSchedule
from .sde import negative_time, reverse_sde
from .space import Space, remove_mean

__all__ = ["ReplayBuffer", "PAPER_DEFAULTS", "DEMConfig", "resolve", "clip_norm", "mc_score",
           "dem_loss", "lambda_weight", "EGNN", "ScoreMLP", "build_network", "init_parameters",
           "GeometricSchedule", "negative_time", "reverse_sde", "Space", "remove_mean"]
