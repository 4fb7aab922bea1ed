"""Resumable jobs from Python (influence.jobs) and chunk runs (influence.scoring.chunks), on the NumPy
reference model: retries, the checkpoint lock, resume after a failure, inputs changed under a job."""
import os
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest

import influence
import influence.scoring.scores
from influence import jobs
from influence.scoring.chunks import ChunkRetryWarning, run_chunks
from influence.models import SoftmaxRegression

from conftest import fail_chunks_from, make_classification

CHUNK = 100


# ------------------------------------------------------------------------------------ run_chunks
def test_run_chunks_retries_a_failing_chunk_once_and_warns():
    calls = []

    def compute(a, b):
        calls.append((a, b))
        if (a, b) == (10, 20) and calls.count((a, b)) == 1:
            raise RuntimeError("Resize: Cannot resize the matrix because it is a view")
        return np.arange(a, b, dtype=float)[None, :]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values, info = run_chunks(compute, 35, chunk_size=10)
    assert np.array_equal(values[0], np.arange(35.0))
    assert calls.count((10, 20)) == 2 and len(calls) == 5
    retry = [w for w in caught if issubclass(w.category, ChunkRetryWarning)]
    assert len(retry) == 1
    text = str(retry[0].message)
    assert "chunk 10:20" in text and "RuntimeError" in text and "is a view" in text


def test_run_chunks_gives_up_after_the_retry_and_never_retries_a_refusal():
    def always(a, b):
        raise RuntimeError("broken")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="broken"):
            run_chunks(always, 10, chunk_size=5)
    calls = []

    def refuse(a, b):
        calls.append(a)
        raise ValueError("bad input")
    with pytest.raises(ValueError, match="bad input"):
        run_chunks(refuse, 10, chunk_size=5)
    assert calls == [0]


# ------------------------------------------------------------------------------------ the lock
def _lock(folder, pid, host=None):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "lock.json"), "w") as f:
        f.write('{"pid": %d, "host": "%s", "started": "earlier"}' % (pid, host or socket.gethostname()))


def test_a_live_lock_is_refused_naming_its_holder(tmp_path):
    folder = str(tmp_path / "out.csv.partial")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock(folder, holder.pid)
        before = sorted(os.listdir(folder))
        with pytest.raises(jobs.LockedError) as info:
            jobs.Checkpoint(folder, {"job": 1})
        text = str(info.value)
        assert "pid %d" % holder.pid in text and socket.gethostname() in text and "in use" in text
        assert sorted(os.listdir(folder)) == before
        with pytest.raises(jobs.LockedError):          # another host: cannot tell, refused too
            _lock(folder, 1, host="elsewhere.example")
            jobs.Checkpoint(folder, {"job": 1}, resume=True)
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path):
    folder = str(tmp_path / "out.csv.partial")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _lock(folder, gone.pid)
    with pytest.warns(jobs.StaleLockWarning, match="pid %d .*no longer runs" % gone.pid):
        ck = jobs.Checkpoint(folder, {"job": 1})
    assert ck.holder["pid"] == os.getpid()
    with pytest.raises(jobs.LockedError, match="pid %d" % os.getpid()):   # held by us now
        jobs.Checkpoint(folder, {"job": 1})
    assert ck.release() is False                                        # nothing saved, lock dropped
    assert os.listdir(folder) == []


# ------------------------------------------------------------------------------------ ScoreJob
@pytest.fixture()
def problem(tmp_path):
    x, y = make_classification(600, 5, 3, seed=3)
    path = str(tmp_path / "train.npz")
    np.savez(path, x=x, y=y)
    train = influence.load_npz(path)
    model = SoftmaxRegression(5, 3, l2=1e-2)
    influence.fit(model, train)
    return model, train, (x[:2], y[:2]), path


def test_score_job_resumes_from_python(problem, tmp_path, monkeypatch):
    model, train, test, _ = problem
    folder = str(tmp_path / "job")
    ref = jobs.ScoreJob(model, train, test, solver="direct", chunk_size=CHUNK).run()
    assert ref.chunks is None and ref.scores.shape == (2, 600)

    with monkeypatch.context() as m:
        fail_chunks_from(m, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ChunkRetryWarning)
            with pytest.raises(jobs.JobFailed) as info:
                jobs.ScoreJob(model, train, test, folder=folder, solver="direct", chunk_size=CHUNK).run()
    assert "injected failure" in str(info.value) and folder in str(info.value)
    assert sorted(f for f in os.listdir(folder) if f.startswith("chunk-")) == [
        "chunk-%012d-%012d.npy" % (a, a + CHUNK) for a in (0, CHUNK)]
    assert not os.path.exists(os.path.join(folder, "lock.json"))        # released

    with pytest.raises(ValueError, match="differs in damping"):          # another job: refused
        jobs.ScoreJob(model, train, test, folder=folder, resume=True, solver="direct", damping=0.1,
                      chunk_size=CHUNK).run()
    got = jobs.ScoreJob(model, train, test, folder=folder, resume=True, solver="direct",
                        chunk_size=CHUNK).run()
    assert got.chunks == {"chunks": 6, "computed": 4, "resumed": 2}
    assert got.solutions is None                                         # s_test from the folder
    assert np.array_equal(got.scores, ref.scores)
    assert not os.path.exists(folder)                                    # removed after success
    assert np.array_equal(got.scores, influence.influence_scores(model, train, test, solver="direct",
                                                                 chunk_size=CHUNK))


def test_context_manager_keeps_the_folder_until_the_block_ends(problem, tmp_path):
    model, train, test, _ = problem
    folder = str(tmp_path / "job")
    with jobs.ScoreJob(model, train, test, folder=folder, solver="direct", chunk_size=CHUNK) as job:
        job.run()
        assert os.path.isfile(os.path.join(folder, "lock.json"))
        assert job.stats == {"chunks": 6, "computed": 6, "resumed": 0}
    assert not os.path.exists(folder)


def test_training_file_rewritten_under_a_local_job_is_refused(problem, tmp_path, monkeypatch):
    model, train, test, path = problem
    x, y = np.load(path)["x"], np.load(path)["y"]
    real = jobs.s_test

    def s_test_then_rewrite(*args, **kwargs):
        out = real(*args, **kwargs)
        np.savez(path, x=x[::-1].copy(), y=y[::-1].copy())       # same shape, same size
        return out
    monkeypatch.setattr(jobs, "s_test", s_test_then_rewrite)
    with pytest.raises(influence.jobs.JobFailed) as info:
        jobs.ScoreJob(model, train, test, folder=str(tmp_path / "job"), solver="direct",
                      chunk_size=CHUNK).run()
    assert isinstance(info.value.cause, jobs.InputChangedError)
    assert path in str(info.value) and "changed while the job used it" in str(info.value)


def test_in_memory_inputs_are_fingerprinted_by_content(problem):
    model, train, test, _ = problem
    a = jobs.ScoreJob(model, (np.asarray(train.x), np.asarray(train.y)), test).fingerprint()
    x2 = np.array(train.x)
    x2[5, 1] += 1e-9
    b = jobs.ScoreJob(model, (x2, np.asarray(train.y)), test).fingerprint()
    assert a["train"] != b["train"] and a["test"] == b["test"] and a["model"] == b["model"]


def test_file_fingerprint_samples_large_files(tmp_path, monkeypatch):
    from influence.common import files as _files
    monkeypatch.setattr(_files, "FULL_HASH_BYTES", 1000)
    monkeypatch.setattr(_files, "SAMPLE_BLOCK_BYTES", 100)
    path = str(tmp_path / "big.bin")
    data = bytearray(os.urandom(100000))
    open(path, "wb").write(data)
    st = os.stat(path)
    fp = _files.file_fingerprint(path)
    data[-1] ^= 0xFF                          # the last byte is always in a sampled block
    open(path, "wb").write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))      # same size, same mtime
    assert _files.file_fingerprint(path)["sha256"] != fp["sha256"]
    with pytest.raises(_files.InputChangedError, match="big.bin changed .*sha256"):
        _files.check_unchanged(fp, "the training data")
