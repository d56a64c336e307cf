"""Plugins: entry points (``boltzbench.samplers`` / ``boltzbench.targets``), ``plugins=`` files,
what --help lists, failures reported without breaking the rest, clashes naming both sources, and
the installed example (examples/ula_plugin) discovered and run in a grid.

Fake distributions are written as ``*.dist-info`` folders on a temporary ``sys.path`` entry, which
``importlib.metadata`` reads like any installed package. The example package must be installed
(``pip install -e examples/ula_plugin``, done by .ci/run); its tests skip with that instruction
when it is not, except under CI (``CI`` set, as .ci/run does) where a missing install fails.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import samplers
import targets
from runners import check, check_target, grid, plugins
from runners import config as cfgmod

ROOT = Path(__file__).resolve().parents[1]


def _example_installed() -> bool:
    return any(ep.name == "ula" for ep in md.entry_points(group="boltzbench.samplers"))


def require_example():
    if _example_installed():
        return
    msg = "examples/ula_plugin is not installed: pip install -e examples/ula_plugin (.ci/run does)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture
def clean_registries(monkeypatch):
    """Fresh plugin state; registries restored afterwards so no other test sees what was added."""
    for mod in (samplers, targets):
        for attr in ("_REGISTRY", "_SOURCES", "_BROKEN"):
            monkeypatch.setattr(mod, attr, dict(getattr(mod, attr)))
    monkeypatch.setattr(plugins, "FAILURES", [])
    monkeypatch.setattr(plugins, "_DISCOVERED", False)
    monkeypatch.delenv(plugins.PLUGINS_ENV, raising=False)
    yield


def _fake_dist(root: Path, dist: str, entry_points: str, modules: dict[str, str]) -> None:
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    for name, code in modules.items():
        (root / f"{name}.py").write_text(code)


GAUSS_TARGET = '''
import torch
from targets.base import Target

class Gauss2(Target):
    name = "gauss2"
    pretty_name = "Gauss-2"
    has_exact_samples = True
    log_Z = 0.0

    def __init__(self):
        super().__init__(2, {"scale": 1.0})

    def _energy(self, x):
        return 0.5 * (x ** 2).sum(-1) + torch.log(torch.tensor(2 * torch.pi))

    def reference(self, split="test", n=None, generator=None):
        return torch.randn(n or 1000, 2, generator=generator)
'''


def test_broken_plugin_reported_and_others_work(tmp_path, monkeypatch, clean_registries):
    _fake_dist(tmp_path, "brokenpkg", "[boltzbench.samplers]\nbroken = no_such_module_xyz:X\n", {})
    monkeypatch.syspath_prepend(str(tmp_path))
    failures = plugins.discover()
    assert [(f.name, f.error.split(":")[0]) for f in failures] == \
        [("broken", "ModuleNotFoundError")]
    assert "distribution brokenpkg 1.0" in failures[0].message()
    with pytest.raises(KeyError, match="brokenpkg 1.0.*No module named 'no_such_module_xyz'"):
        samplers.get("broken")
    assert samplers.get("mala").name == "mala"  # the rest still works
    g = cfgmod.parse(["samplers=mala", "targets=gmm40", "profile=smoke"])
    assert g.samplers == ["mala"]
    assert any("BROKEN" in line or "FAILED" in line for line in plugins.describe())


def test_name_clash_names_both_sources(tmp_path, monkeypatch, clean_registries):
    code = ("class Mala:\n    name = 'mala'\n    pretty_name = 'other MALA'\n"
            "    has_log_prob = False\n")
    _fake_dist(tmp_path, "clashpkg", "[boltzbench.samplers]\nmala = clashmod:Mala\n",
               {"clashmod": code})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError) as err:
        plugins.discover()
    assert "clashpkg 1.0" in str(err.value) and "built-in (samplers.mcmc)" in str(err.value)


def test_target_entry_point_discovered_and_checked(tmp_path, monkeypatch, clean_registries):
    _fake_dist(tmp_path, "gausspkg", "[boltzbench.targets]\ngauss2 = gaussmod:Gauss2\n",
               {"gaussmod": GAUSS_TARGET})
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.discover()
    assert "gausspkg 1.0" in targets.source("gauss2")
    lines = check_target.check_target("gauss2")
    assert [str(x) for x in lines if not x.ok] == []
    assert check.main(["target=gauss2"]) == 0  # the guide's command
    # and a packaged sampler runs on it through the same check
    assert [str(x) for x in check.check_sampler(samplers.get("mala"), "gauss2") if not x.ok] == []


def test_plugins_option_loads_a_file_for_grid_and_workers(tmp_path, clean_registries):
    src = (ROOT / "tests" / "helpers_check.py").read_text()
    path = tmp_path / "my_good.py"
    path.write_text(src + "\nimport samplers\nsamplers.register(Good)\n")
    g = cfgmod.parse([f"plugins={path}", "samplers=t_good", "targets=gmm40", "profile=smoke",
                      f"out={tmp_path / 'out'}"])
    assert g.samplers == ["t_good"] and str(path) in g.plugins
    specs = grid.build_specs(g)
    assert all(str(path) in s.plugins for s in specs)  # what each worker loads before its cell
    assert samplers.source("t_good") == "module my_good"
    with pytest.raises(cfgmod.ConfigError, match="plugins: .*not an existing .py file|not a file"):
        cfgmod.parse([f"plugins={tmp_path / 'missing.py'}", "profile=smoke"])


# ------------------------------------------------------------------- the installed example
def test_example_discovered_with_its_distribution(clean_registries):
    require_example()
    plugins.load()
    assert samplers.get("ula").pretty_name == "ULA"
    assert "distribution ula-plugin 0.1.0" in samplers.source("ula")
    assert "sampler ula: distribution ula-plugin 0.1.0" in grid.help_text()


def test_guide_check_command_passes():
    """The guide's `python -m runners.check sampler=ula` (in-process here; the subprocess form runs
    in the slow grid test)."""
    require_example()
    torch.set_num_threads(1)
    assert check.main(["sampler=ula", "targets=gmm40,dw4"]) == 0


def test_example_runs_in_a_grid(tmp_path):
    """One ULA cell on GMM-40 through the grid (in-process debug launcher; the slow test below
    runs the guide's command with local worker processes)."""
    require_example()
    torch.set_num_threads(1)
    out = tmp_path / "run"
    assert grid.main(["targets=gmm40", "samplers=ula", "seeds=1", "profile=smoke",
                      "launcher=debug", "collect=false", f"out={out}"]) == 0
    (row_file,) = out.glob("cells/**/row.json")
    row = json.loads(row_file.read_text())
    assert (row["sampler"], row["status"]) == ("ula", "ok")
    assert row["energy_evals"] > 0


@pytest.mark.slow
def test_guide_commands_end_to_end(tmp_path):
    """docs/adding-a-sampler.md, steps 2-4 as written: check, grid beside MALA, the tables.
    (~60-90 s on the busy 2-core machine.)"""
    require_example()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    run = dict(cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    helptext = subprocess.run([sys.executable, "-m", "runners.grid", "--help"], **run)
    assert "sampler ula: distribution ula-plugin 0.1.0" in helptext.stdout
    chk = subprocess.run([sys.executable, "-m", "runners.check", "sampler=ula"], **run)
    assert chk.returncode == 0, chk.stdout[-3000:]
    assert "SKIP  [lj13]" in chk.stdout and " 0 failed" in chk.stdout
    out = tmp_path / "smoke"
    g = subprocess.run([sys.executable, "-m", "runners.grid", "targets=gmm40,dw4",
                        "samplers=mala,ula", "seeds=2", "profile=smoke", f"out={out}"], **run)
    assert g.returncode == 0, g.stderr[-3000:]
    rows = pd.read_csv(out / "results.csv")
    assert len(rows) == 8 and set(rows["status"]) == {"ok"}
    summary = (out / "tables" / "summary.md").read_text()
    assert "ULA" in summary and "MALA" in summary
