"""Every sampler preset in the paper profile says what it is: ``source:`` (the published
configuration it reproduces) or ``ours:`` / ``ours,`` (with the reason), in the comment that opens
its block (issue 11: no setting labelled official or published when it is not)."""
import re
from pathlib import Path

import yaml

import samplers

PAPER = Path(__file__).resolve().parents[1] / "runners" / "profiles" / "paper.yaml"


def _block_labels(text: str) -> dict[str, str]:
    out, inside = {}, False
    for line in text.splitlines():
        if line.startswith("samplers:"):
            inside = True
            continue
        if inside and re.match(r"^\S", line):
            break
        m = re.match(r"^  ([a-z0-9_]+):\s*(?:#\s*(.*))?$", line) if inside else None
        if m:
            out[m.group(1)] = (m.group(2) or "").strip()
    return out


def test_every_paper_preset_carries_its_source_or_ours():
    text = PAPER.read_text()
    labels = _block_labels(text)
    assert set(labels) == set(yaml.safe_load(text)["samplers"])
    assert set(labels) >= {"idem", "pdem", "pis", "dds", "fab", "smc", "mala", "hmc", "rwm"}
    for name, label in labels.items():
        assert name in samplers.names()
        assert re.match(r"^(source: \S|ours[:,] )", label), (name, label)


def test_no_preset_is_called_official_without_a_source():
    text = PAPER.read_text()
    for name, label in _block_labels(text).items():
        if label.startswith("ours"):
            assert "as the official config" not in label and "the official configs" not in label
