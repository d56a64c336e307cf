"""Package layering: runners > metrics, samplers > targets; metrics and samplers not each other.

A package may import only the packages below it. Two checks: every ``import``/``from`` statement
in the source (module level or inside a function: a late import is still a dependency), and what
importing each package actually pulls into ``sys.modules`` in a fresh interpreter.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("targets", "samplers", "metrics", "runners")
# package -> the project packages it may import
ALLOWED = {"targets": set(), "samplers": {"targets"}, "metrics": {"targets"},
           "runners": {"targets", "samplers", "metrics"}}


def violations(root: Path) -> list[str]:
    """``"<file>:<line> <package> imports <other>"`` for every import above a package's layer."""
    found = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods = [node.module]
                else:
                    continue  # relative imports stay inside the package
                for mod in mods:
                    top = mod.split(".")[0]
                    if top in PACKAGES and top != pkg and top not in ALLOWED[pkg]:
                        found.append(f"{path.relative_to(root)}:{node.lineno} {pkg} imports {top}")
    return found


def test_no_package_imports_one_above_it():
    assert violations(ROOT) == []


def test_checker_catches_an_upward_import(tmp_path):
    # The checker itself must see what it is meant to forbid, at module level and in a function.
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "targets" / "builder.py").write_text(
        "import torch\nfrom samplers import kernels\n\ndef f():\n    import metrics.density\n")
    (tmp_path / "samplers" / "x.py").write_text("from . import y\nfrom targets import get\n")
    (tmp_path / "metrics" / "m.py").write_text("import samplers.mcmc\n")
    (tmp_path / "runners" / "r.py").write_text("import samplers, metrics, targets\n")
    assert violations(tmp_path) == [
        "targets/builder.py:2 targets imports samplers",
        "targets/builder.py:5 targets imports metrics",
        "metrics/m.py:1 metrics imports samplers",
    ]


@pytest.mark.slow  # ~9 s on the shared 2-core machine, almost all of it importing torch
def test_importing_a_package_loads_nothing_above_it():
    # One fresh interpreter (torch's import dominates the cost): targets first, then metrics, then
    # samplers; after each, nothing that package may not use is loaded. (That samplers does not
    # pull in metrics, already loaded by then, is the static check's job above.)
    code = "\n".join([
        "import sys",
        "def loaded(): return {m.split('.')[0] for m in sys.modules}",
        "import targets; print('targets', sorted(loaded() & {'samplers', 'metrics', 'runners'}))",
        "import metrics; print('metrics', sorted(loaded() & {'samplers', 'runners'}))",
        "import samplers; print('samplers', sorted(loaded() & {'runners'}))",
    ])
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["targets []", "metrics []", "samplers []"], out.stdout


def test_reference_builder_is_a_runner():
    # Moved from targets/ (it uses the MCMC kernels and the metrics): `python -m
    # targets.make_reference` is gone, `python -m runners.make_reference` is the command
    # (tests/test_make_reference.py runs its main).
    assert importlib.util.find_spec("runners.make_reference") is not None
    # (a file check, not find_spec: an editable install of another checkout can still map the old
    # module name to that checkout's file)
    assert not (ROOT / "targets" / "make_reference.py").exists()
    from runners import make_reference
    assert make_reference._parser().prog == "python -m runners.make_reference"
