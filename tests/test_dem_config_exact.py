"""samplers/dem/config.py field by field: the defaults against the official DEM experiment configs
as transcribed here from /work/shared/docs/reference-idem.md §4 (not read from the module), every
validation message written out in full from the house pattern "<field>: got <v>; expected ...",
and :func:`resolve` on stand-in targets (a name and a particle count are all it reads)."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from samplers.dem import config as C
from samplers.dem.config import DEMConfig, resolve, validate

# reference-idem.md §4.1 (sigmas), §4.2 (K), §4.3 (clip), §4.4 (lambda), §4.5 (batch, generated),
# §4.7 (diffusion scale, negative time), §4.8 (networks), §4.9 (lr); GMM-40 trained in units of 50
# and started from the estimator-driven SDE; particles from the prior. sample_batch: eval batches.
OFFICIAL = {
    "gmm40": dict(sigma_min=1e-5, sigma_max=1.0, n_mc=500, batch_size=512, n_generate=1000,
                  diffusion_scale=1.0, n_negative_steps=0, score_clip=70.0, lambda_weighting="h",
                  lr=5e-4, gmm_init="estimator", network="mlp", hidden=128, n_layers=3,
                  coord_scale=50.0, sample_batch=1000),
    "dw4": dict(sigma_min=1e-5, sigma_max=3.0, n_mc=1000, batch_size=512, n_generate=1000,
                diffusion_scale=1.0, n_negative_steps=0, score_clip=20.0, lambda_weighting="none",
                lr=1e-3, gmm_init="prior", network="egnn", hidden=128, n_layers=3,
                coord_scale=1.0, sample_batch=1000),
    "lj13": dict(sigma_min=0.01, sigma_max=2.0, n_mc=1000, batch_size=512, n_generate=1000,
                 diffusion_scale=0.9, n_negative_steps=0, score_clip=20.0, lambda_weighting="none",
                 lr=1e-3, gmm_init="prior", network="egnn", hidden=128, n_layers=5,
                 coord_scale=1.0, sample_batch=1000),
    "lj55": dict(sigma_min=0.5, sigma_max=4.0, n_mc=100, batch_size=128, n_generate=128,
                 diffusion_scale=0.5, n_negative_steps=10, score_clip=20.0, lambda_weighting="none",
                 lr=1e-3, gmm_init="prior", network="egnn", hidden=128, n_layers=5,
                 coord_scale=1.0, sample_batch=128),
}
# Families for targets outside the paper (module doc): GMM-like at scale 1 from the prior;
# LJ-13-like with diffusion scale 1.
FAMILY = {"_flat": {**OFFICIAL["gmm40"], "gmm_init": "prior", "coord_scale": 1.0},
          "_particles": {**OFFICIAL["lj13"], "diffusion_scale": 1.0}}
# Shared (§4.5, §4.7, §4.9): 100 inner steps, 1000 EM steps, 1e-4 negative dt, lambda 1e-3,
# gradient clip 0.5, buffer 10k / 1k, 1024 initial samples.
SHARED = dict(n_inner=100, n_integration_steps=1000, negative_dt=1e-4, lambda_eps=1e-3,
              grad_clip=0.5, buffer_size=10_000, buffer_min=1_000, n_init=1024, max_outer=None,
              estimator_chunk=None, compile=False, device="cpu")


def test_per_target_defaults_are_the_official_constants():
    for name, want in {**OFFICIAL, **FAMILY}.items():
        got = C.PAPER_DEFAULTS[name]
        assert set(got) == set(want), name
        for key, v in want.items():
            assert got[key] == v and type(got[key]) is type(v), (name, key, got[key])
    assert set(C.PER_TARGET_FIELDS) == set(OFFICIAL["gmm40"])
    assert C.CHOICES == {"lambda_weighting": ("h", "none"), "gmm_init": ("estimator", "prior"),
                         "network": ("mlp", "egnn")}


def test_dataclass_defaults_shared_values_and_none_for_per_target_fields():
    cfg = DEMConfig()
    for key, v in SHARED.items():
        assert getattr(cfg, key) == v and type(getattr(cfg, key)) is type(v), key
    for key in OFFICIAL["gmm40"]:
        assert getattr(cfg, key) is None, key
    assert set(SHARED) | set(OFFICIAL["gmm40"]) == {f.name for f in dataclasses.fields(cfg)}
    cfg.validate()  # the defaults are valid as they stand


REQUIRED = {"n_inner", "n_integration_steps", "negative_dt", "lambda_eps", "grad_clip",
            "buffer_size", "buffer_min", "n_init"}
POSITIVE_INT = ["n_mc", "batch_size", "n_inner", "n_generate", "n_integration_steps",
                "buffer_size", "n_init", "hidden", "n_layers", "max_outer", "estimator_chunk",
                "sample_batch"]
NONNEG_INT = ["n_negative_steps", "buffer_min"]
NONNEG = ["score_clip", "grad_clip", "lambda_eps"]
POSITIVE = ["sigma_min", "sigma_max", "diffusion_scale", "negative_dt", "lr", "coord_scale"]


def _tail(name):
    return "" if name in REQUIRED else " (or None for the default)"


def _message(cfg):
    with pytest.raises(ValueError) as err:
        cfg.validate()
    return str(err.value)


BAD = ([(n, 0, "a positive integer") for n in POSITIVE_INT]
       + [(n, 2.0, "a positive integer") for n in POSITIVE_INT]
       + [(n, -1, "an integer >= 0") for n in NONNEG_INT]
       + [(n, True, "an integer >= 0") for n in NONNEG_INT]
       + [(n, -0.5, "a finite number >= 0") for n in NONNEG]
       + [(n, float("inf"), "a finite number >= 0") for n in NONNEG]
       + [(n, 0.0, "a finite number > 0") for n in POSITIVE]
       + [(n, "1", "a finite number > 0") for n in POSITIVE])


@pytest.mark.parametrize("name,value,expected", BAD)
def test_each_field_refused_with_its_own_message(name, value, expected):
    # sigma_max / buffer_min bad on their own, the rest at their defaults
    cfg = dataclasses.replace(DEMConfig(), **{name: value})
    assert _message(cfg) == f"{name}: got {value!r}; expected {expected}{_tail(name)}"


@pytest.mark.parametrize("name", POSITIVE_INT + NONNEG_INT + NONNEG + POSITIVE)
def test_none_means_the_paper_value_only_for_per_target_fields(name):
    cfg = dataclasses.replace(DEMConfig(), **{name: None})
    if name in REQUIRED:
        assert _message(cfg).startswith(f"{name}: got None; expected ")
    else:
        cfg.validate()


@pytest.mark.parametrize("name,values", [("n_negative_steps", 0), ("buffer_min", 0),
                                         ("score_clip", 0.0), ("grad_clip", 0), ("lambda_eps", 0.0),
                                         ("n_mc", 1), ("negative_dt", 1e-300)])
def test_boundary_values_are_accepted(name, values):
    dataclasses.replace(DEMConfig(), **{name: values}).validate()


def test_choices_sigma_order_buffer_sizes_compile_and_device_messages():
    for name, allowed in C.CHOICES.items():
        assert _message(DEMConfig(**{name: "x"})) == \
            f"{name}: got 'x'; allowed: {', '.join(allowed)}, or None for the default"
        for v in allowed:
            DEMConfig(**{name: v}).validate()
    assert _message(DEMConfig(sigma_min=2.0, sigma_max=2.0)) == \
        "sigma_max: got 2.0; expected > sigma_min=2.0"
    DEMConfig(sigma_min=2.0, sigma_max=2.0000001).validate()
    DEMConfig(sigma_min=2.0).validate()     # one end given: the other is the target's
    DEMConfig(sigma_max=1e-9).validate()
    assert _message(DEMConfig(buffer_size=10, buffer_min=11)) == \
        "buffer_min: got 11; expected <= buffer_size=10"
    DEMConfig(buffer_size=10, buffer_min=10).validate()
    assert _message(DEMConfig(compile=1)) == "compile: got 1; expected true or false"
    DEMConfig(compile=True).validate()
    assert _message(DEMConfig(device="nonsense")).startswith("device: got 'nonsense'; expected")


def test_validate_prefixes_the_sampler_name():
    with pytest.raises(ValueError) as err:
        validate(DEMConfig(n_mc=0), "pdem")
    assert str(err.value) == "pdem.n_mc: got 0; expected a positive integer (or None for the default)"
    validate(DEMConfig(), "pdem")


def _target(name, n_particles=None):
    return SimpleNamespace(name=name, n_particles=n_particles)


@pytest.mark.parametrize("name,n_particles", [("gmm40", None), ("dw4", 4), ("lj13", 13),
                                              ("lj55", 55)])
def test_resolve_fills_every_none_from_the_paper_table(name, n_particles):
    cfg = DEMConfig()
    out = resolve(cfg, _target(name, n_particles), "idem")
    for key, v in OFFICIAL[name].items():
        assert getattr(out, key) == v, (name, key)
    for key, v in SHARED.items():
        assert getattr(out, key) == v, key
    assert cfg.n_mc is None and out is not cfg   # a copy; the input is left as it was


def test_resolve_keeps_given_values_and_picks_the_family_by_particles():
    out = resolve(DEMConfig(n_mc=7, hidden=16, lr=0.1), _target("lj13", 13), "idem")
    assert (out.n_mc, out.hidden, out.lr, out.n_layers) == (7, 16, 0.1, 5)
    for name, n_particles, family in [("other", None, "_flat"), ("other", 3, "_particles"),
                                      ("", 0, "_flat")]:
        out = resolve(DEMConfig(), _target(name, n_particles), "idem")
        assert {k: getattr(out, k) for k in FAMILY[family]} == FAMILY[family], (name, family)
    out = resolve(DEMConfig(), SimpleNamespace(), "idem")    # no name, no n_particles attribute
    assert {k: getattr(out, k) for k in FAMILY["_flat"]} == FAMILY["_flat"]


def test_resolve_validates_and_checks_network_and_initial_buffer():
    with pytest.raises(ValueError) as err:
        resolve(DEMConfig(n_mc=0), _target("gmm40"), "idem")
    assert str(err.value).startswith("idem.n_mc: got 0;")
    for n_particles in (None, 0):
        with pytest.raises(ValueError) as err:
            resolve(DEMConfig(network="egnn"), _target("gmm40", n_particles), "idem")
        assert str(err.value) == ("idem.network: got 'egnn', which needs a particle target; "
                                  "'gmm40' has no particles; allowed here: mlp")
    with pytest.raises(ValueError) as err:   # neither a name nor a particle count
        resolve(DEMConfig(network="egnn"), SimpleNamespace(), "idem")
    assert str(err.value) == ("idem.network: got 'egnn', which needs a particle target; "
                              "'' has no particles; allowed here: mlp")
    assert resolve(DEMConfig(network="egnn"), _target("x", 3), "idem").network == "egnn"
    assert resolve(DEMConfig(network="mlp"), _target("lj13", 13), "idem").network == "mlp"
    with pytest.raises(ValueError) as err:
        resolve(DEMConfig(n_init=999), _target("dw4", 4), "pdem")
    assert str(err.value) == ("pdem.buffer_min: got 1000, which exceeds n_init=999: the first "
                              "training batch could not be drawn; expected <= n_init")
    assert resolve(DEMConfig(n_init=1000), _target("dw4", 4), "pdem").n_init == 1000
