"""Helpers shared by the grid runner tests (test_grid.py, test_grid_launch.py)."""
from __future__ import annotations

from pathlib import Path

from runners import grid, rows

ROOT = Path(__file__).resolve().parents[1]


def run_grid(args, capsys=None):
    """``grid.main`` on ``args`` -> (exit status, captured stderr or "")."""
    code = grid.main([str(a) for a in args])
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


def load_rows(out: Path) -> dict[tuple, dict]:
    """The rows under ``out`` keyed by (target, sampler, seed)."""
    return {(r["target"], r["sampler"], r["seed"]): r for r in rows.iter_rows(out)}


# ------------------------------------------------------------------ grid subprocesses (signals)
def start_grid(args, **popen) -> "subprocess.Popen":
    """``python -m runners.grid args`` as a real subprocess (stderr piped, text). SIGINT is reset
    to its default in the child: a test run started in the background of a non-interactive shell
    would otherwise hand the grid an ignored SIGINT."""
    import signal
    import subprocess
    import sys
    return subprocess.Popen([sys.executable, "-m", "runners.grid", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            **popen)


def children(pid: int) -> list[int]:
    """The children of ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            pass
    return out


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``: for a grid, its submitit controllers and their workers."""
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as dead: it computes nothing and writes nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_for(predicate, timeout: float, step: float = 0.05) -> float | None:
    """Poll ``predicate`` until true; seconds it took, or None after ``timeout``."""
    import time
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(step)
    return None
