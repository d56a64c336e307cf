"""Reference data failures are loud and specific: missing vs corrupt, downloads that time out,
retry a bounded number of times and leave no partial file, and BOLTZBENCH_OFFLINE parsed strictly."""
from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
import time

import numpy as np
import pytest

import targets
from runners import references
from targets import ReferenceCorrupt, ReferenceMissing, data


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No data folder, an empty cache, downloads allowed, quick retries."""
    monkeypatch.delenv("BOLTZBENCH_DATA", raising=False)
    monkeypatch.setenv("BOLTZBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BOLTZBENCH_OFFLINE", raising=False)
    monkeypatch.setattr(data, "RETRY_PAUSE_S", 0.01)
    return tmp_path / "cache"


@pytest.mark.parametrize("value,offline", [("1", True), ("true", True), ("ON", True),
                                           ("0", False), ("false", False), ("", False)])
def test_offline_flag_is_parsed_not_tested_for_presence(monkeypatch, value, offline):
    monkeypatch.setenv("BOLTZBENCH_OFFLINE", value)
    assert data.offline() is offline


def test_unknown_offline_value_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv("BOLTZBENCH_OFFLINE", "maybe")
    with pytest.raises(ValueError, match="BOLTZBENCH_OFFLINE: got 'maybe'"):
        data.offline()


def _silent_server():
    """A socket that accepts connections (the kernel's backlog) but never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    return srv


def test_a_server_that_never_answers_times_out_retries_and_leaves_no_part_file(isolated,
                                                                              monkeypatch):
    srv = _silent_server()
    monkeypatch.setattr(data, "OFFICIAL_URL", f"http://127.0.0.1:{srv.getsockname()[1]}/{{file}}")
    monkeypatch.setenv(data.TIMEOUT_ENV, "0.3")
    t0 = time.perf_counter()
    with pytest.raises(ReferenceMissing, match="after 3 attempts"):
        targets.get("dw4").reference("test")
    elapsed = time.perf_counter() - t0
    srv.close()
    assert 0.8 < elapsed < 10  # three attempts of ~0.3 s, not a hang
    assert list(isolated.iterdir()) == []  # no tmp*.part left behind


class _Files(http.server.BaseHTTPRequestHandler):
    payload = b""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args):
        pass


def _serve(payload: bytes):
    handler = type("H", (_Files,), {"payload": payload})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_download_with_offline_0_succeeds_and_is_checksummed(isolated, monkeypatch, tmp_path):
    arr = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", arr)
    blob = (tmp_path / "x.npy").read_bytes()
    srv = _serve(blob)
    monkeypatch.setattr(data, "OFFICIAL_URL", f"http://127.0.0.1:{srv.server_port}/{{file}}")
    monkeypatch.setitem(data.SHA256, "test_split_DW4.npy", hashlib.sha256(blob).hexdigest())
    monkeypatch.setenv("BOLTZBENCH_OFFLINE", "0")  # 0 allows downloads
    try:
        ref = targets.get("dw4").reference("test")
        assert ref.shape == (20, 8)
        assert (isolated / "test_split_DW4.npy").stat().st_mode & 0o777 == 0o644 & ~_umask()
        # a server handing out a different file: refused, nothing kept
        (isolated / "test_split_DW4.npy").unlink()
        monkeypatch.setitem(data.SHA256, "test_split_DW4.npy", "0" * 64)
        with pytest.raises(ReferenceCorrupt, match="sha256"):
            targets.get("dw4").reference("test")
        assert list(isolated.iterdir()) == []
    finally:
        srv.shutdown()


def _umask() -> int:
    m = __import__("os").umask(0)
    __import__("os").umask(m)
    return m


@pytest.mark.parametrize("content,needle", [
    (b"not an npy file at all", "not a readable .npy"),
    ("object", "2-D float array"),
    ("columns", "expected 165 columns"),
    ("nan", "non-finite"),
])
def test_bad_official_lj55_file_is_corrupt_and_named(tmp_path, monkeypatch, content, needle):
    path = tmp_path / "test_split_LJ55-1000-part1.npy"
    if content == "object":
        np.save(path, np.array(["a", "b"]))
    elif content == "columns":
        np.save(path, np.zeros((4, 39), dtype=np.float32))
    elif content == "nan":
        np.save(path, np.full((4, 165), np.nan, dtype=np.float32))
    else:
        path.write_bytes(content)
    monkeypatch.setenv("BOLTZBENCH_DATA", str(tmp_path))
    with pytest.raises(ReferenceCorrupt, match=needle) as info:
        targets.get("lj55").reference("test")
    assert str(path) in str(info.value)


def test_our_lj55_reference_without_provenance_is_refused(tmp_path, monkeypatch):
    np.save(tmp_path / "mcmc_lj55_test.npy", np.zeros((4, 165), dtype=np.float32))
    monkeypatch.setenv("BOLTZBENCH_DATA", str(tmp_path))
    monkeypatch.setenv("BOLTZBENCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ReferenceCorrupt, match="no provenance record"):
        targets.get("lj55").reference("test")
    (tmp_path / "mcmc_lj55_test.json").write_text(json.dumps({"sha256": "abc"}))
    with pytest.raises(ReferenceCorrupt, match="records abc"):
        targets.get("lj55").reference("test")


def test_preflight_separates_missing_from_corrupt(tmp_path, monkeypatch):
    (tmp_path / "test_split_DW4.npy").write_bytes(b"garbage")
    monkeypatch.setenv("BOLTZBENCH_DATA", str(tmp_path))
    monkeypatch.setenv("BOLTZBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BOLTZBENCH_OFFLINE", "1")
    report = references.resolve(["gmm40", "dw4", "lj13", "lj55"])
    assert set(report.info) == {"gmm40"}
    assert set(report.corrupt) == {"dw4"} and "sha256" in report.corrupt["dw4"]
    assert set(report.missing) == {"lj13", "lj55"}
    block = references.missing_message(report, {"lj13": 9, "lj55": 8})
    assert "17 cell(s)" in block and "make_reference lj55" in block and "BOLTZBENCH_DATA" in block
