"""Targets against independent values, for the survivors of mutmut's first run on targets/
(docs/testing.md, "Latest scores"): hand-computed energies with non-default constants (DW-4's
constant term and offset, LJ's eps and r_m kept apart), the registry's bookkeeping, the rows a
target contributes to results (params, reference provenance), reference subsampling by the
caller's generator, the gradient charge of an autograd pass through ``energy``, and the eager
pieces of the compiled path of targets/fast.py (its writer and chunk loop, the toolchain check).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import targets
from targets import base, fast
from targets.gmm import gmm_means
from targets.particles import double_well_pair, remove_mean


def dw_by_hand(x, a=0.9, b=-4.0, c=0.0, offset=4.0):
    """Σ_{i<j} a (d-o)^4 + b (d-o)^2 + c written out with explicit loops over the 6 pairs."""
    xp = x.reshape(-1, 4, 2)
    out = torch.zeros(xp.shape[0], dtype=x.dtype)
    for i in range(4):
        for j in range(i + 1, 4):
            s = (xp[:, i] - xp[:, j]).norm(dim=-1) - offset
            out = out + a * s**4 + b * s**2 + c
    return out


def lj_by_hand(x, n, eps, rm, softening=1e-6, pair_factor=2.0, osc=1.0):
    """pair_factor Σ_{i<j} eps[(rm/d)^12 - 2 (rm/d)^6] + osc/2 Σ|x_i - x̄|^2, loops over pairs."""
    xp = x.reshape(-1, n, 3)
    out = torch.zeros(xp.shape[0], dtype=x.dtype)
    for i in range(n):
        for j in range(i + 1, n):
            d = ((xp[:, i] - xp[:, j]).pow(2).sum(-1) + softening).sqrt()
            out = out + pair_factor * eps * ((rm / d) ** 12 - 2 * (rm / d) ** 6)
    centred = xp - xp.mean(1, keepdim=True)
    return out + 0.5 * osc * centred.pow(2).sum((1, 2))


# ----------------------------------------------------------------------------- DW-4 constants
def test_double_well_pair_defaults_are_the_official_constants():
    d = torch.tensor([0.0, 1.5, 4.0, 5.0, 7.25], dtype=torch.float64)
    s = d - 4.0
    torch.testing.assert_close(double_well_pair(d), 0.9 * s**4 - 4.0 * s**2)


@pytest.mark.parametrize("kw", [{"c": 1.5}, {"offset": 3.0}, {"a": 0.5, "b": -2.0}])
def test_dw4_with_other_constants_matches_the_hand_sum_in_both_paths(kw, gen, monkeypatch):
    # The default c = 0 hides the constant term's sign and count (6 pairs); offset 4 hides whether
    # the offset reaches the pair term. Both the readable energy and the fused kernel are checked.
    monkeypatch.setenv(fast.COMPILE_ENV, "0")
    t = targets.DoubleWell4(**kw)
    x = 2.0 * torch.randn(32, 8, generator=gen, dtype=torch.float64)
    want = dw_by_hand(x, **kw)
    torch.testing.assert_close(t.energy(x), want)
    e, g = t.energy_and_grad(x)
    torch.testing.assert_close(e, want)
    xr = x.clone().requires_grad_(True)
    (g_want,) = torch.autograd.grad(dw_by_hand(xr, **kw).sum(), xr)
    torch.testing.assert_close(g, g_want)


# ----------------------------------------------------------------------------- LJ constants
def test_lj_with_distinct_eps_and_rm_matches_the_hand_sum(gen, monkeypatch):
    # eps = 1 = r_m by default, so swapping or dropping either argument is invisible there.
    monkeypatch.setenv(fast.COMPILE_ENV, "0")
    t = targets.LennardJones(5, eps=0.7, rm=1.3)
    x = 1.3 * torch.randn(16, 15, generator=gen, dtype=torch.float64)
    want = lj_by_hand(x, 5, 0.7, 1.3)
    torch.testing.assert_close(t.energy(x), want)
    torch.testing.assert_close(t.energy_and_grad(x)[0], want)


def test_lj_params_recorded_in_rows():
    # describe() is what every result row records as target_params.
    assert targets.get("lj13").describe()["target_params"] == {
        "n_particles": 13, "convention": "official", "eps": 1.0, "rm": 1.0, "softening": 1e-6,
        "pair_factor": 2.0, "oscillator_scale": 1.0}
    assert targets.get("lj55", convention="paper").params == {
        "n_particles": 55, "convention": "paper", "eps": 1.0, "rm": 1.0, "softening": 1e-6,
        "pair_factor": 1.0, "oscillator_scale": 0.5}
    with pytest.raises(ValueError, match=r"convention must be one of \['official', 'paper'\].*'bgflow'"):
        targets.LennardJones(3, convention="bgflow")


@pytest.mark.parametrize("cls,n", [(targets.LJ13, 13), (targets.LJ55, 55)])
def test_lj13_lj55_pass_keywords_and_data_dir_on(cls, n, tmp_path, gen):
    t = cls(softening=0.25, eps=2.0, data_dir=tmp_path)
    assert t.data_dir == tmp_path and t.params["softening"] == 0.25
    x = n ** (1 / 3) * torch.randn(4, 3 * n, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(t.energy(x), lj_by_hand(x, n, 2.0, 1.0, softening=0.25))


def test_remove_mean_keeps_every_batch_axis(gen):
    x = torch.randn(2, 3, 8, generator=gen, dtype=torch.float64)
    y = remove_mean(x, 4, 2)
    assert y.shape == x.shape
    xp = x.reshape(2, 3, 4, 2)
    torch.testing.assert_close(y.reshape(2, 3, 4, 2), xp - xp.mean(2, keepdim=True))


# ----------------------------------------------------------------------------- base class
def test_autograd_through_energy_charges_one_gradient_per_configuration(gen):
    t = targets.get("dw4")
    x = torch.randn(2, 3, 8, generator=gen, requires_grad=True)
    t.energy(x).sum().backward()
    assert t.counter.snapshot() == {"energy_evals": 6, "grad_evals": 6}
    t.energy(x[0]).sum().backward()
    assert t.counter.snapshot() == {"energy_evals": 9, "grad_evals": 9}


def test_subsample_rows_bounds_and_generator():
    data = torch.arange(10.0).reshape(5, 2)
    for n in (1, 5):
        torch.testing.assert_close(base.subsample_rows(data, n, None, "w"), data[:n])
    for n in (0, 6):
        with pytest.raises(ValueError, match=rf"w: n must be in \[1, 5\], got {n}"):
            base.subsample_rows(data, n, None, "w")
    got = base.subsample_rows(data, 3, torch.Generator().manual_seed(7), "w")
    idx = torch.randperm(5, generator=torch.Generator().manual_seed(7))[:3]
    torch.testing.assert_close(got, data[idx])
    assert base.subsample_rows(data, None, None, "w") is data


# ----------------------------------------------------------------------------- GMM-40
def test_gmm_exact_samples_are_mean_plus_std_times_the_generators_normals():
    t = targets.get("gmm40")
    g = torch.Generator().manual_seed(3)
    k = torch.randint(40, (6,), generator=g)
    want = t.means[k] + t.std * torch.randn(6, 2, generator=g)
    torch.testing.assert_close(t.sample_exact(6, torch.Generator().manual_seed(3)), want)


def test_gmm_reference_defaults_sizes_and_provenance():
    t = targets.get("gmm40")
    test = t.reference()
    torch.testing.assert_close(test, t.reference("test"))
    torch.testing.assert_close(t.reference("test", n=10), test[:10])
    # The fixed splits are exact samples from a generator seeded 1000 (test) / 2000 (val); a
    # larger n than the split's size draws that many from the same seed.
    torch.testing.assert_close(test, t.sample_exact(1000, torch.Generator().manual_seed(1000)))
    torch.testing.assert_close(t.reference("val", n=3000),
                               t.sample_exact(3000, torch.Generator().manual_seed(2000)))
    fresh = t.reference("val", n=4, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(fresh, t.sample_exact(4, torch.Generator().manual_seed(5)))
    assert t.reference(generator=torch.Generator().manual_seed(5)).shape == (1000, 2)
    assert t.reference_info() == {"reference_source": "exact", "reference_file": "exact seed 1000",
                                  "reference_sha256": ""}
    assert t.reference_info("val")["reference_file"] == "exact seed 2000"
    with pytest.raises(ValueError, match=r"split must be one of \['test', 'val'\], got 'train'"):
        t.reference("train")


def test_gmm_means_defaults_and_other_parameters():
    # FAB's construction: torch.manual_seed(seed); (rand(K, 2) - 0.5) * 2 * loc_scaling.
    def fab_means(k, loc, seed):
        return (torch.rand(k, 2, generator=torch.Generator().manual_seed(seed)) - 0.5) * 2 * loc

    torch.testing.assert_close(gmm_means(), fab_means(40, 40.0, 0))
    t = targets.GMM40(n_modes=3, loc_scaling=10.0, log_var_scaling=0.0, seed=5)
    torch.testing.assert_close(t.means, fab_means(3, 10.0, 5))
    assert t.std == pytest.approx(math.log(2.0))  # softplus(0)
    assert t.describe()["target_params"] == {"n_modes": 3, "loc_scaling": 10.0,
                                             "log_var_scaling": 0.0, "means_seed": 5}
    x = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    comp = torch.distributions.Normal(t.means.double(), t.std).log_prob(x[:, None]).sum(-1)
    torch.testing.assert_close(t.energy(x), -(torch.logsumexp(comp, -1) - math.log(3)))


# ----------------------------------------------------------------------------- particle references
@pytest.mark.reference_data
def test_particle_reference_defaults_generator_and_lazy_info():
    t = targets.get("dw4")
    assert t.reference_info()["reference_file"] == "test_split_DW4.npy"  # loads on first ask
    full = t.reference()
    torch.testing.assert_close(full, t.reference("test"))
    got = t.reference("test", n=4, generator=torch.Generator().manual_seed(2))
    idx = torch.randperm(full.shape[0], generator=torch.Generator().manual_seed(2))[:4]
    torch.testing.assert_close(got, full[idx])
    with pytest.raises(ValueError, match=r"dw4: split must be one of \['test', 'val'\], got 'x'"):
        t.reference("x")
    with pytest.raises(ValueError, match=r"dw4.reference: n must be in"):
        t.reference("test", n=0)


# ----------------------------------------------------------------------------- registry
@pytest.fixture
def registry(monkeypatch):
    """The registry's dicts, restored after the test."""
    for name in ("_REGISTRY", "_SOURCES", "_BROKEN"):
        monkeypatch.setattr(targets, name, dict(getattr(targets, name)))
    return targets


def _factory():
    return targets.DoubleWell4(c=1.0)


def test_register_records_sources_refuses_clashes_and_clears_broken(registry):
    registry.mark_broken("toy", "plugin toy failed: boom")
    with pytest.raises(KeyError, match="boom"):
        registry.get("toy")
    registry.register("toy", _factory)
    assert registry.source("toy") == f"module {__name__}"
    assert registry.get("toy").params["c"] == 1.0
    registry.mark_broken("toy", "ignored: toy is registered")
    assert registry.get("toy").name == "dw4"
    registry.register("toy", _factory, source="plugin toy-pkg")  # same factory: source updated
    assert registry.source("toy") == "plugin toy-pkg"
    registry.register("toy", _factory)  # same factory, no source: kept
    assert registry.source("toy") == "plugin toy-pkg"
    with pytest.raises(ValueError, match=r"'toy' from module targets.gmm is already registered "
                                         r"from plugin toy-pkg"):
        registry.register("toy", targets.GMM40)
    registry.register("other", lambda: targets.GMM40())
    assert registry.names()[-2:] == ["toy", "other"]
    assert registry.source("missing") == ""


def test_register_without_a_module_says_so(registry):
    class NoModule:
        """A factory whose ``__module__`` cannot be read."""

        @property
        def __module__(self):
            raise AttributeError("__module__")

        def __call__(self):
            return targets.GMM40()

    registry.register("nomod", NoModule())
    assert registry.source("nomod") == "module ?"
    assert registry.get("nomod").name == "gmm40"


# ----------------------------------------------------------------------------- fast.py, eager parts
def test_writer_copies_the_kernels_outputs_into_the_buffers(gen):
    x = torch.randn(3, 4, 2, generator=gen, dtype=torch.float64)
    e_out, g_out = torch.empty(3, dtype=torch.float64), torch.empty_like(x)
    fast._writer(fast.dw_energy_and_grad)(x, e_out, g_out, 0.9, -4.0, 0.0, 4.0)
    e, g = fast.dw_energy_and_grad(x, 0.9, -4.0, 0.0, 4.0)
    torch.testing.assert_close(e_out, e)
    torch.testing.assert_close(g_out, g)


def test_chunk_loop_sends_chunks_of_two_or_more_to_the_writer(gen):
    calls = []

    def write(xs, es, gs, *params):
        calls.append(xs.shape[0])
        fast._writer(fast.dw_energy_and_grad)(xs, es, gs, *params)

    x = torch.randn(7, 4, 2, generator=gen, dtype=torch.float64)
    e, g = torch.empty(7, dtype=torch.float64), torch.empty_like(x)
    params = (0.9, -4.0, 0.0, 4.0)
    fast._run_chunks(fast.dw_energy_and_grad, write, x, e, g, params, 4)  # chunks 2, 2, 2, 1
    assert calls == [2, 2, 2]
    e_want, g_want = fast.dw_energy_and_grad(x, *params)
    torch.testing.assert_close(e, e_want)
    torch.testing.assert_close(g, g_want)


def test_toolchain_check(monkeypatch):
    monkeypatch.setattr(fast.shutil, "which", lambda c: None)
    assert "C++ compiler" in fast._toolchain_missing(torch.device("cpu"))
    monkeypatch.setattr(fast.shutil, "which", lambda c: "/usr/bin/c++" if c == "c++" else None)
    assert fast._toolchain_missing(torch.device("cpu")) is None
    monkeypatch.setattr(fast.shutil, "which", lambda c: "/usr/bin/clang++" if c == "clang++" else None)
    assert fast._toolchain_missing(torch.device("cpu")) is None
    monkeypatch.setattr(fast.shutil, "which", lambda c: "/usr/bin/g++" if c == "g++" else None)
    assert fast._toolchain_missing(torch.device("cpu")) is None
    monkeypatch.setitem(__import__("sys").modules, "triton", None)  # import raises ImportError
    assert "triton" in fast._toolchain_missing(torch.device("cuda"))
    assert "'meta'" in fast._toolchain_missing(torch.device("meta"))


@pytest.mark.parametrize("kernel,params,event", [
    (fast.dw_energy_and_grad, (0.9, -4.0, 1.0, 4.0), (4, 2)),
    (fast.lj_energy_and_grad, (1.0, 1.0, 1e-6, 2.0, 1.0), (5, 3)),
    (fast.gmm_energy_and_grad, (torch.randn(7, 2, generator=torch.Generator().manual_seed(0),
                                            dtype=torch.float64), 1.3), (2,)),
])
def test_kernels_keep_every_batch_axis(kernel, params, event, gen):
    # The kernels take ``[..., *event]`` (fused() flattens, but they are public pure functions):
    # a [2, 3] batch must give the [6] batch's numbers, reshaped.
    x = 1.5 * torch.randn(2, 3, *event, generator=gen, dtype=torch.float64)
    e, g = kernel(x, *params)
    e_flat, g_flat = kernel(x.reshape(6, *event), *params)
    assert e.shape == (2, 3) and g.shape == x.shape
    torch.testing.assert_close(e, e_flat.reshape(2, 3))
    torch.testing.assert_close(g, g_flat.reshape(x.shape))


# fused() bounds memory by entries per configuration: K = 40 mixture components for GMM-40,
# N x N pair entries for DW-4 (16); each cap below gives 10 configurations per chunk.
@pytest.mark.parametrize("name, entries, scale, dim", [("gmm40", 400, 30, 2), ("dw4", 160, 2, 8)])
def test_chunks_are_sized_by_the_entries_per_configuration(monkeypatch, gen, name, entries,
                                                           scale, dim):
    monkeypatch.setenv(fast.COMPILE_ENV, "0")
    monkeypatch.setattr(fast, "CHUNK_ENTRIES", entries)
    seen = []
    run = fast._run_chunks
    monkeypatch.setattr(fast, "_run_chunks", lambda *a: seen.append(a[-1]) or run(*a))
    t = targets.get(name)
    x = scale * torch.randn(25, dim, generator=gen, dtype=torch.float64)
    e, _ = t.energy_and_grad(x)
    assert seen == [3]
    torch.testing.assert_close(e, t.energy(x))


@pytest.fixture
def fake_compile(monkeypatch):
    """torch.compile replaced by a recorder (no compilation), the caches emptied, a toolchain."""
    calls = []

    def compile_(fn, **kw):
        calls.append(kw)
        return fn

    monkeypatch.setattr(torch, "compile", compile_)
    monkeypatch.setattr(fast, "_compiled", {})
    monkeypatch.setattr(fast, "_disabled", {})
    monkeypatch.setattr(fast, "_toolchain_missing", lambda device: None)
    return calls


def _kernel(x, *params):
    return x.sum(tuple(range(1, x.ndim))), 2 * x


@pytest.mark.parametrize("setting,shape,dtype,compiled", [
    ("0", (5000, 2), torch.float32, False),
    ("1", (1, 2), torch.float64, False),       # a dynamic axis cannot have size 1
    ("1", (2, 2), torch.float64, True),
    ("1", (3, 1), torch.float32, True),
    ("auto", (fast.COMPILE_MIN_BATCH, 4, 2), torch.float32, True),
    ("auto", (fast.COMPILE_MIN_BATCH - 1, 2), torch.float32, False),
    ("auto", (fast.COMPILE_MIN_BATCH, 2), torch.float64, False),  # float64: checks stay eager
    ("auto", (10, 2), torch.float32, False),
])
def test_pick_compiles_what_the_setting_says(setting, shape, dtype, compiled, fake_compile,
                                             monkeypatch):
    monkeypatch.setenv(fast.COMPILE_ENV, setting)
    write = fast._pick(_kernel, torch.zeros(shape, dtype=dtype))
    assert (write is not None) == compiled
    if compiled:
        assert fake_compile == [{"dynamic": False}] and fast._compiled[_kernel] is write
        x = torch.ones(3, 2)
        e, g = torch.empty(3), torch.empty(3, 2)
        write(x, e, g)  # the writer of this kernel
        torch.testing.assert_close(e, torch.full((3,), 2.0))
        torch.testing.assert_close(g, 2 * x)


def test_pick_without_a_toolchain_disables_the_kernel_with_the_reason(fake_compile, monkeypatch):
    monkeypatch.setenv(fast.COMPILE_ENV, "1")
    monkeypatch.setattr(fast, "_toolchain_missing", lambda device: "no C++ compiler on PATH")
    with pytest.warns(RuntimeWarning, match=r"running _kernel eagerly \(no C\+\+ compiler on PATH\)"):
        assert fast._pick(_kernel, torch.zeros(8, 2)) is None
    assert fast._disabled == {_kernel: "no C++ compiler on PATH"} and fake_compile == []
    assert fast._pick(_kernel, torch.zeros(8, 2)) is None  # stays disabled


# ----------------------------------------------------------------------------- LJ-55 references
@pytest.mark.parametrize("raw,want", [("1", True), ("true", True), ("Yes", True), (" ON ", True),
                                      ("", False), ("0", False), ("FALSE", False), ("no", False),
                                      ("off", False)])
def test_allow_unconverged_spellings(raw, want, monkeypatch):
    from targets.particles import ALLOW_UNCONVERGED_ENV, allow_unconverged
    monkeypatch.setenv(ALLOW_UNCONVERGED_ENV, raw)
    assert allow_unconverged() is want


def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("BOLTZBENCH_DATA", str(tmp_path))
    monkeypatch.setenv("BOLTZBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BOLTZBENCH_OFFLINE", "1")


def test_lj55_official_file_provenance_columns(tmp_path, monkeypatch, gen):
    from targets import data
    _isolated(tmp_path, monkeypatch)
    arr = torch.randn(3, 165, generator=gen, dtype=torch.float64).numpy()
    np.save(tmp_path / "test_split_LJ55-1000-part1.npy", arr)
    t = targets.get("lj55")
    ref = t.reference()
    assert ref.dtype == torch.float32
    torch.testing.assert_close(ref, t.remove_mean(torch.as_tensor(arr, dtype=torch.float32)))
    path = tmp_path / "test_split_LJ55-1000-part1.npy"
    assert t.reference_info() == {"reference_source": "official", "reference_file": path.name,
                                  "reference_sha256": data.sha256_of(path),
                                  "reference_path": str(path)}


def test_lj55_our_reference_provenance_columns_and_width_check(tmp_path, monkeypatch, gen):
    import json

    from targets import data
    _isolated(tmp_path, monkeypatch)
    path = tmp_path / "mcmc_lj55_val.npy"
    arr = torch.randn(2, 165, generator=gen, dtype=torch.float64).numpy()
    np.save(path, arr)
    meta = {"sha256": data.sha256_of(path), "diagnostics": {"converged": True}}
    path.with_suffix(".json").write_text(json.dumps(meta))
    t = targets.get("lj55")
    assert t.reference("val").dtype == torch.float32
    assert t.reference_info("val") == {"reference_source": "mcmc", "reference_file": path.name,
                                       "reference_sha256": meta["sha256"],
                                       "reference_path": str(path), "reference_converged": True}
    np.save(path, arr[:, :162])  # a file of the wrong width, provenance made to match
    path.with_suffix(".json").write_text(json.dumps({**meta, "sha256": data.sha256_of(path)}))
    with pytest.raises(data.ReferenceCorrupt, match="expected 165 columns"):
        targets.get("lj55").reference("val")


def test_base_class_defaults():
    class Bare(targets.Target):
        name = "bare"
        pretty_name = "Bare"

        def __init__(self):
            super().__init__(dim=2, params={"k": 1})

    t = Bare()
    assert t.reference_info() == {"reference_source": "none"}
    with pytest.raises(NotImplementedError):
        t.reference()
    with pytest.raises(NotImplementedError):
        t.energy(torch.zeros(1, 2))
    t.counter.energy_evals = 5
    t.reset_counter()
    assert t.counter.snapshot() == {"energy_evals": 0, "grad_evals": 0}
    assert repr(t) == f"Bare(name='bare', dim=2, fingerprint={t.fingerprint})"
    with pytest.raises(targets.TargetInputError, match=r"bare: x must be a torch.Tensor of shape \[\.\.\., 2\], got list"):
        t.energy([0.0, 1.0])
