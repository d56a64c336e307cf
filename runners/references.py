"""Pre-flight of reference data: every target's test split resolved once, before anything runs.

The grid (and ``runners.evaluate``) call :func:`resolve` first, so that reference problems are loud
and early instead of NaN columns found later:

* a corrupt or unreadable file (checksum, format, provenance) stops the run: exit 2 with the file,
  what is wrong and how to fix it — nothing is scored against a file we cannot trust;
* a missing reference (offline, no network, LJ-55 not built yet) is a warning block naming the
  targets, how many cells will be unscored and the command or variable that fixes it; those
  cells still run (their samples are kept and rescored once the reference exists).

Downloads happen here, in the grid process, once per file (with timeouts; targets/data.py), so that
cells never wait on the network.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import targets
from targets import ReferenceCorrupt, ReferenceMissing

# How each missing reference is fixed (LJ-55's build time measured by make_reference's defaults).
FIX = {
    "dw4": "set BOLTZBENCH_DATA to a folder holding test_split_DW4.npy and val_split_DW4.npy, or "
           "allow the download (unset BOLTZBENCH_OFFLINE, network to raw.githubusercontent.com)",
    "lj13": "set BOLTZBENCH_DATA to a folder holding test_split_LJ13-1000.npy and "
            "val_split_LJ13-1000.npy, or allow the download (unset BOLTZBENCH_OFFLINE)",
    "lj55": "build our long-MCMC reference once: `python -m runners.make_reference lj55` "
            "(converges in about 7-9 minutes on one thread of a 2-core machine; writes to ~/.cache/boltzbench), or put the "
            "official test_split_LJ55-1000-part1.npy in BOLTZBENCH_DATA",
}


@dataclass
class ReferenceReport:
    """Per target: ``ok`` (with provenance), ``missing`` (with the reason) or ``corrupt``."""

    info: dict[str, dict] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    corrupt: dict[str, str] = field(default_factory=dict)


def resolve(target_names: list[str], split: str = "test") -> ReferenceReport:
    """Load (and, where needed, download) each target's ``split``; never raises for data."""
    report = ReferenceReport()
    for name in target_names:
        target = targets.get(name)
        try:
            target.reference(split)
            report.info[name] = dict(target.reference_info(split))
        except ReferenceCorrupt as exc:
            report.corrupt[name] = str(exc)
        except ReferenceMissing as exc:
            report.missing[name] = str(exc)
        except ValueError as exc:  # e.g. a malformed BOLTZBENCH_OFFLINE
            report.corrupt[name] = str(exc)
    return report


def corrupt_message(report: ReferenceReport) -> str:
    lines = ["error: reference data cannot be used; nothing was run:"]
    for name, reason in report.corrupt.items():
        lines.append(f"  {name}: {reason}")
    return "\n".join(lines)


def missing_message(report: ReferenceReport, cells_per_target: dict[str, int]) -> str:
    """The warning block printed before dispatch when some references are missing."""
    n = sum(cells_per_target.get(t, 0) for t in report.missing)
    bar = "!" * 78
    lines = [bar, f"WARNING: no reference for {', '.join(report.missing)}: {n} cell(s) will run "
                  f"but stay UNSCORED (metrics NaN, summary 'ok, unscored').",
             "They are rescored from their saved samples when the grid runs again with the "
             "reference in place. To fix:"]
    for name, reason in report.missing.items():
        lines.append(f"  {name} ({cells_per_target.get(name, 0)} cells): {FIX.get(name, reason)}")
        lines.append(f"      why: {reason}")
    lines.append(bar)
    return "\n".join(lines)
