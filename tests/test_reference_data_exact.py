"""targets/data.py piece by piece, with a fake ``urlopen`` (never the network) and hashlib.

Independent of the code under test: checksums come from ``hashlib`` over the bytes written here
(and, for the official table, from the sha256 column of the shared data README, transcribed below),
the download URL and defaults from the project README ("30 s socket timeout, 3 attempts, never a
partial file"), the messages are read for the file, the expected and the observed value, and the
downloader's behaviour is watched through a recording fake of ``urllib.request.urlopen`` and of
``time.sleep``.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from targets import ReferenceCorrupt, ReferenceMissing, data

# jarridrb/DEM @ 8e95319, folder data/ (shared/data/README.md's table)
OFFICIAL = {
    "test_split_DW4.npy": "ef4466793b3502b2fe405aad22d3ae43b34827971594c5bab28684771d828244",
    "val_split_DW4.npy": "05683af2442aea8c358d35482a1c6877fc53796e46c9f5335fa92aa4f3670de6",
    "test_split_LJ13-1000.npy": "c5064a56282e96441f1ff2f1babb13c241a99cd1077aee3667951d06055a785b",
    "val_split_LJ13-1000.npy": "77a051cd50b16bec41e8fa056f6f77e21804d530a7461369f3a3ee985a576eb7",
}
FILE = "test_split_DW4.npy"


@pytest.fixture
def env(tmp_path, monkeypatch):
    """No data folder, an empty cache under tmp_path, downloads allowed, default timeout."""
    monkeypatch.delenv("BOLTZBENCH_DATA", raising=False)
    monkeypatch.delenv(data.OFFLINE_ENV, raising=False)
    monkeypatch.delenv(data.TIMEOUT_ENV, raising=False)
    monkeypatch.setenv("BOLTZBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _npy_bytes(tmp_path: Path, arr: np.ndarray) -> bytes:
    np.save(tmp_path / "_blob.npy", arr)
    blob = (tmp_path / "_blob.npy").read_bytes()
    (tmp_path / "_blob.npy").unlink()
    return blob


class FakeNet:
    """Records every urlopen(url, timeout) and sleep; serves ``payload`` in reads of the asked
    size, or raises ``errors[k]`` at attempt k (after ``partial`` bytes, if given)."""

    def __init__(self, payload: bytes = b"", errors=(), partial: int = 0, watch: Path = None):
        self.payload, self.errors, self.partial, self.watch = payload, list(errors), partial, watch
        self.calls, self.sleeps, self.read_sizes, self.listings = [], [], [], []

    def urlopen(self, url, timeout=None):
        self.calls.append((url, timeout))
        err = self.errors.pop(0) if self.errors else None
        net = self

        class Resp:
            pos = 0

            def __enter__(self):
                return self

            def __exit__(self, *a):
                return False

            def read(self, n):
                net.read_sizes.append(n)
                if net.watch is not None:  # what is on disk while the download runs
                    net.listings.append(sorted(os.listdir(net.watch)))
                if err is not None and self.pos >= net.partial:
                    raise err
                stop = net.partial if err is not None else len(net.payload)
                chunk = net.payload[self.pos:min(self.pos + n, stop)]
                self.pos += len(chunk)
                return chunk

        return Resp()

    def install(self, monkeypatch):
        monkeypatch.setattr(data.urllib.request, "urlopen", self.urlopen)
        monkeypatch.setattr(data.time, "sleep", self.sleeps.append)
        return self


def test_the_checksum_table_is_the_official_one_and_the_files_hash_to_it():
    assert data.SHA256 == OFFICIAL
    for file, digest in OFFICIAL.items():
        path = Path("/work/shared/data") / file
        if path.is_file():
            assert data.sha256_of(path) == digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_sha256_of_reads_a_file_larger_than_one_chunk(tmp_path):
    blob = np.random.default_rng(0).bytes(int(2.5 * (1 << 20)))
    (tmp_path / "f").write_bytes(blob)
    assert data.sha256_of(tmp_path / "f") == hashlib.sha256(blob).hexdigest()


def test_cache_dir_is_the_env_value_else_the_home_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("BOLTZBENCH_CACHE", str(tmp_path / "c"))
    assert data.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("BOLTZBENCH_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_dir() == tmp_path / "home" / ".cache" / "boltzbench"


@pytest.mark.parametrize("value,offline", [("yes", True), (" On ", True), ("TRUE", True),
                                           ("no", False), ("OFF", False), (" 0 ", False)])
def test_every_documented_spelling_of_the_offline_flag(monkeypatch, value, offline):
    monkeypatch.setenv(data.OFFLINE_ENV, value)
    assert data.offline() is offline
    monkeypatch.delenv(data.OFFLINE_ENV)
    assert data.offline() is False


def test_an_unknown_offline_value_quotes_it_and_lists_both_sets(monkeypatch):
    monkeypatch.setenv(data.OFFLINE_ENV, " Maybe")
    with pytest.raises(ValueError) as e:
        data.offline()
    assert str(e.value) == ("BOLTZBENCH_OFFLINE: got ' Maybe'; allowed: 1/true/yes/on (no "
                            "downloads) or 0/false/no/off/unset (downloads allowed)")


def test_download_timeout_default_value_and_refusals(monkeypatch):
    monkeypatch.delenv(data.TIMEOUT_ENV, raising=False)
    assert data.download_timeout() == 30.0
    monkeypatch.setenv(data.TIMEOUT_ENV, "2.5")
    assert data.download_timeout() == 2.5
    for raw in ("abc", "0", "-1", "nan"):
        monkeypatch.setenv(data.TIMEOUT_ENV, raw)
        with pytest.raises(ValueError) as e:
            data.download_timeout()
        assert str(e.value) == f"BOLTZBENCH_DOWNLOAD_TIMEOUT: got {raw!r}; expected seconds > 0"


def test_candidate_dirs_order_and_the_first_folder_holding_the_file_wins(env, monkeypatch):
    a, b, cache = env / "a", env / "b", env / "cache"
    assert data.candidate_dirs() == [cache]
    monkeypatch.setenv("BOLTZBENCH_DATA", "")  # empty: ignored
    assert data.candidate_dirs(a) == [a, cache]
    monkeypatch.setenv("BOLTZBENCH_DATA", str(b))
    assert data.candidate_dirs(str(a)) == [a, b, cache]
    assert data.find_file(FILE, a) is None
    for d in (cache, b):
        d.mkdir(parents=True)
        (d / FILE).write_bytes(b"x")
        assert data.find_file(FILE, a) == d / FILE
    (a / FILE).mkdir(parents=True)  # a folder of that name is not the file
    assert data.find_file(FILE, a) == b / FILE


def test_verify_returns_the_digest_and_a_mismatch_names_file_got_and_expected(tmp_path):
    path = tmp_path / FILE
    path.write_bytes(b"some bytes")
    got = hashlib.sha256(b"some bytes").hexdigest()
    assert data.verify(path, None) == got == data.verify(path, got)
    with pytest.raises(ReferenceCorrupt) as e:
        data.verify(path, "f" * 64)
    assert str(e.value).startswith(f"reference file {path} has sha256 {got}, expected {'f' * 64}: "
                                   f"the file is corrupt or not the official one. Delete it")


def test_load_array_accepts_a_float_table_and_names_each_problem(tmp_path):
    def saved(arr, **kw):
        np.save(tmp_path / "r.npy", arr, **kw)
        return tmp_path / "r.npy"

    good = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(data.load_array(saved(good), 4), good)
    np.testing.assert_array_equal(data.load_array(saved(good)), good)  # dim None: any width
    path = saved(np.array([{"a": 1}], dtype=object), allow_pickle=True)  # never unpickled
    with pytest.raises(ReferenceCorrupt, match=f"reference file {path} is not a readable .npy "
                                               r"array \(ValueError: "):
        data.load_array(path)
    for bad, shown in ((np.zeros(4, np.float32), "shape (4,) dtype float32"),
                       (np.zeros((2, 4), np.int64), "shape (2, 4) dtype int64")):
        with pytest.raises(ReferenceCorrupt) as e:
            data.load_array(saved(bad), 4)
        assert str(e.value) == (f"reference file {path}: expected a 2-D float array, got {shown}; "
                                f"delete or replace it")
    with open(path, "wb") as f:  # an .npz archive under the .npy name: no shape, no dtype
        np.savez(f, a=good)
    with pytest.raises(ReferenceCorrupt) as e:
        data.load_array(path, 4)
    assert str(e.value) == (f"reference file {path}: expected a 2-D float array, got shape ? "
                            f"dtype ?; delete or replace it")
    with pytest.raises(ReferenceCorrupt) as e:
        data.load_array(saved(good), 5)
    assert str(e.value) == (f"reference file {path}: expected 5 columns, got shape (3, 4); it "
                            f"belongs to another target; delete or replace it")
    nan3 = good.copy()
    nan3[0, 1] = nan3[2, 3] = np.nan
    nan3[1, 0] = -np.inf
    with pytest.raises(ReferenceCorrupt) as e:
        data.load_array(saved(nan3), 4)
    assert str(e.value) == f"reference file {path}: 3 non-finite values; delete or replace it"


def test_umask_is_read_without_changing_it():
    old = os.umask(0o027)
    try:
        assert data._umask() == 0o027 and data._umask() == 0o027
    finally:
        os.umask(old)


# --- downloads, through the fake -------------------------------------------------------------

def _official(env, monkeypatch, payload: bytes):
    """FILE's expected sha256 set to that of ``payload``."""
    monkeypatch.setitem(data.SHA256, FILE, hashlib.sha256(payload).hexdigest())


def test_a_missing_file_is_downloaded_into_the_cache_and_recorded(env, monkeypatch, capsys):
    arr = np.random.default_rng(1).normal(size=(3000, 8)).astype(np.float32)
    blob = _npy_bytes(env, arr)  # ~96 kB
    _official(env, monkeypatch, blob)
    cache = env / "deep" / "cache"  # two levels that do not exist yet
    monkeypatch.setenv("BOLTZBENCH_CACHE", str(cache))
    net = FakeNet(blob, watch=cache).install(monkeypatch)
    old = os.umask(0o027)  # not the usual 0o022, which leaves 0o644 as it is
    try:
        got, info = data.load_official(FILE, dim=8)
    finally:
        os.umask(old)
    url = f"https://raw.githubusercontent.com/jarridrb/DEM/main/data/{FILE}"
    assert net.calls == [(url, 30.0)] and net.sleeps == []
    assert max(net.read_sizes) <= 1 << 20  # bounded reads, never the whole file at once
    # while it downloads, the only file is a hidden .part beside the destination
    (part,), = set(map(tuple, net.listings))
    assert part.startswith(f".{FILE}.") and part.endswith(".part")
    np.testing.assert_array_equal(got, arr)
    assert info == {"reference_source": "official", "reference_file": FILE,
                    "reference_sha256": hashlib.sha256(blob).hexdigest(),
                    "reference_path": str(cache / FILE)}
    assert sorted(p.name for p in cache.iterdir()) == [FILE]
    assert (cache / FILE).read_bytes() == blob
    assert (cache / FILE).stat().st_mode & 0o777 == 0o640  # 0o644 under that umask
    assert capsys.readouterr().err == (f"[data] downloading {FILE} from {url} into {cache} "
                                       f"(attempt 1/3, timeout 30 s)\n")


def test_a_local_copy_is_preferred_and_nothing_is_fetched(env, monkeypatch):
    arr = np.ones((5, 8), np.float32)
    blob = _npy_bytes(env, arr)
    _official(env, monkeypatch, blob)
    net = FakeNet(b"never served").install(monkeypatch)
    for where in ("data_dir", "env", "cache"):
        d = env / where
        d.mkdir(exist_ok=True)
        (d / FILE).write_bytes(blob)
    monkeypatch.setenv("BOLTZBENCH_DATA", str(env / "env"))
    for data_dir, chosen in ((env / "data_dir", "data_dir"), (None, "env")):
        _, info = data.load_official(FILE, data_dir, dim=8)
        assert info["reference_path"] == str(env / chosen / FILE)
    monkeypatch.delenv("BOLTZBENCH_DATA")
    assert data.load_official(FILE, dim=8)[1]["reference_path"] == str(env / "cache" / FILE)
    with pytest.raises(ReferenceCorrupt, match="expected 7 columns, got shape \\(5, 8\\)"):
        data.load_official(FILE, dim=7)  # the target's width reaches the checks
    assert net.calls == []


def test_a_local_copy_with_the_wrong_checksum_is_refused_not_replaced(env, monkeypatch):
    (env / FILE).write_bytes(b"tampered")
    net = FakeNet(b"the right file").install(monkeypatch)
    with pytest.raises(ReferenceCorrupt) as e:
        data.load_official(FILE, env)
    got = hashlib.sha256(b"tampered").hexdigest()
    assert f"reference file {env / FILE} has sha256 {got}, expected {OFFICIAL[FILE]}" in str(e.value)
    assert net.calls == [] and (env / FILE).read_bytes() == b"tampered"


def test_offline_and_missing_says_where_it_looked_and_how_to_fix_it(env, monkeypatch):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    net = FakeNet(b"").install(monkeypatch)
    with pytest.raises(ReferenceMissing) as e:
        data.load_official(FILE)
    url = data.OFFICIAL_URL.format(file=FILE)
    assert str(e.value) == (f"reference file {FILE!r} not found in {[str(env / 'cache')]} and "
                            f"BOLTZBENCH_OFFLINE forbids downloading it from {url}. Set "
                            f"BOLTZBENCH_DATA to a folder holding it, or unset BOLTZBENCH_OFFLINE.")
    assert net.calls == [] and not (env / "cache").exists()


def test_transient_errors_are_retried_with_growing_pauses(env, monkeypatch):
    blob = _npy_bytes(env, np.zeros((2, 8), np.float32))
    _official(env, monkeypatch, blob)
    monkeypatch.setenv(data.TIMEOUT_ENV, "4")
    net = FakeNet(blob, errors=[OSError("reset"), TimeoutError("slow")], partial=50)
    net.install(monkeypatch)
    data._download(FILE, env / "cache" / FILE)
    assert [t for _, t in net.calls] == [4.0, 4.0, 4.0]
    assert net.sleeps == [1.0, 2.0]  # attempt k waits k * RETRY_PAUSE_S
    assert sorted(os.listdir(env / "cache")) == [FILE]
    assert (env / "cache" / FILE).read_bytes() == blob


def test_three_failed_attempts_leave_no_partial_file_and_name_the_last_error(env, monkeypatch,
                                                                            capsys):
    net = FakeNet(b"z" * 100, errors=[OSError("a"), OSError("b"), ConnectionError("c")],
                  partial=60).install(monkeypatch)
    with pytest.raises(ReferenceMissing) as e:
        data._download(FILE, env / "cache" / FILE)
    url = data.OFFICIAL_URL.format(file=FILE)
    assert str(e.value) == (f"could not download reference file {FILE!r} from {url} after 3 "
                            f"attempts (ConnectionError: c). Set BOLTZBENCH_DATA (or pass "
                            f"data_dir) to a folder holding it, or retry when the network works.")
    assert len(net.calls) == 3 and net.sleeps == [1.0, 2.0]
    assert os.listdir(env / "cache") == []
    err = capsys.readouterr().err
    assert [f"(attempt {k}/3, timeout 30 s)" in err for k in (1, 2, 3)] == [True] * 3


def test_a_wrong_file_from_the_server_is_refused_at_once_and_not_kept(env, monkeypatch):
    net = FakeNet(b"not the official bytes").install(monkeypatch)
    with pytest.raises(ReferenceCorrupt) as e:
        data._download(FILE, env / "cache" / FILE)
    got = hashlib.sha256(b"not the official bytes").hexdigest()
    assert f"has sha256 {got}, expected {OFFICIAL[FILE]}" in str(e.value)
    assert len(net.calls) == 1 and net.sleeps == [] and os.listdir(env / "cache") == []


def test_an_interrupted_download_removes_its_part_file(env, monkeypatch):
    FakeNet(b"y" * 100, errors=[KeyboardInterrupt()], partial=30).install(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        data._download(FILE, env / "cache" / FILE)
    assert os.listdir(env / "cache") == []


def test_a_file_without_a_published_checksum_is_kept_as_served(env, monkeypatch):
    FakeNet(b"unlisted").install(monkeypatch)
    data._download("other.npy", env / "cache" / "other.npy")
    assert (env / "cache" / "other.npy").read_bytes() == b"unlisted"
