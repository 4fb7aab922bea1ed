"""The score matrix of many test points, chunk by chunk: running aggregates over the test points and
a memory-mapped ``.npy`` file, so that memory holds one chunk (n_test × chunk rows), never the matrix.

For test points j = 1..m (labels c_j) and training points i = 1..n, with S[j, i] = I_up,loss(z_i, z_j)
(see :mod:`influence.scores`; float64, :data:`MATRIX_DTYPE`)::

    sum_i  = Σ_j S[j, i]              mean_i = sum_i / m
    sum_i^c = Σ_{j: c_j = c} S[j, i]   mean_i^c = sum_i^c / m_c
    Δ = −S / n  (predicted test-loss change if z_i is removed; linear, so Δ sums are −sum_i / n)

Every training point's aggregates come from its own chunk only, so they do not depend on the order
in which chunks finish or on a resume.
"""
import errno
import os
import shutil

import numpy as np

from ..common.files import atomic_path

__all__ = ["ScoreAggregates", "MatrixCheckpoint", "MATRIX_DTYPE"]

#: dtype of the score matrix file (the scores are computed in float64).
MATRIX_DTYPE = np.float64


class ScoreAggregates(object):
    """Running sums over the test points of I_up,loss, fed ``add(start, stop, scores)`` with the
    (n_test, stop − start) chunks of the score matrix (e.g. as ``sink=`` of
    :func:`influence.influence_scores`). ``groups``: the class label of each test point (n_test,),
    or None (no per-class aggregates, e.g. regression).

    ``sum``, ``mean``: (n_train,) over all test points; ``classes``: the sorted distinct labels (None
    without groups), ``counts``: test points per class, ``class_sum``/``class_mean``: (n_classes,
    n_train). :meth:`loss_change` turns any of them into Δ = −I_up,loss / n_train (positive: the
    training point helped); :meth:`ranking` lists the most helpful and harmful training points.
    """

    def __init__(self, n_test, n_train, groups=None):
        self.n_test, self.n_train = int(n_test), int(n_train)
        if self.n_test < 1 or self.n_train < 1:
            raise ValueError("ScoreAggregates(n_test=%r, n_train=%r): both must be >= 1" % (n_test, n_train))
        self.sum = np.zeros(self.n_train)
        self._seen = np.zeros(self.n_train, dtype=bool)
        self.classes = self.counts = self.class_sum = None
        if groups is not None:
            groups = np.asarray(groups).reshape(-1)
            if len(groups) != self.n_test:
                raise ValueError("groups has %d labels for %d test points; pass one label per test point"
                                 % (len(groups), self.n_test))
            self.classes, self._codes = np.unique(groups, return_inverse=True)
            self.counts = np.bincount(self._codes, minlength=len(self.classes))
            self._rows = [np.flatnonzero(self._codes == c) for c in range(len(self.classes))]
            self.class_sum = np.zeros((len(self.classes), self.n_train))

    def add(self, start, stop, scores):
        """Add the chunk ``scores`` (n_test, stop − start) of training rows start..stop."""
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (self.n_test, stop - start):
            raise ValueError("chunk %d:%d has shape %s; expected (%d, %d)"
                             % (start, stop, scores.shape, self.n_test, stop - start))
        self.sum[start:stop] = scores.sum(axis=0)
        if self.classes is not None:
            for c, rows in enumerate(self._rows):
                self.class_sum[c, start:stop] = scores[rows].sum(axis=0)
        self._seen[start:stop] = True

    __call__ = add

    @property
    def complete(self):
        """True when every training row has been added."""
        return bool(self._seen.all())

    @property
    def mean(self):
        return self.sum / self.n_test

    @property
    def class_mean(self):
        return None if self.classes is None else self.class_sum / self.counts[:, None]

    def loss_change(self, values):
        """Δ = −values / n_train (values: any of the I_up,loss aggregates)."""
        return -np.asarray(values, dtype=np.float64) / float(self.n_train)

    @staticmethod
    def ranking(delta, top):
        """(helpful, harmful): up to ``top`` training indices with the largest Δ > 0 and the most
        negative Δ < 0 (``delta`` e.g. ``loss_change(mean)``), ties in index order."""
        order = np.argsort(-delta, kind="mergesort")
        helpful = [int(i) for i in order[:top] if delta[i] > 0]
        order = np.argsort(delta, kind="mergesort")
        harmful = [int(i) for i in order[:top] if delta[i] < 0]
        return helpful, harmful


class MatrixCheckpoint(object):
    """A :class:`influence.jobs.Checkpoint` whose finished scoring chunks live in ONE memory-mapped
    ``.npy`` file of shape (n_test, n_train), :data:`MATRIX_DTYPE`, holding I_up,loss (the chunks
    handed to :meth:`save_chunk` are g_iᵀ s_test, its negation, as :func:`influence.scoring.chunks.run_chunks`
    computes them). A chunk is written into the file, flushed, and only then marked done by a small
    array in the checkpoint (``matrix-chunk-START-STOP``), so a killed run resumes from the marked
    chunks and the finished file equals an uninterrupted run's bit for bit. Every access maps the file
    and unmaps it afterwards: the process never holds more of it than one chunk. Other arrays
    (s_test, forward steps) go to the checkpoint as usual. :meth:`publish` moves the finished file to
    its final path.
    """

    FILE = "matrix.npy"

    def __init__(self, checkpoint, n_test, n_train):
        self.checkpoint = checkpoint
        self.shape = (int(n_test), int(n_train))
        self.stats = checkpoint.stats
        self.path = os.path.join(checkpoint.folder, self.FILE)
        self._ready = False

    @staticmethod
    def _marker(start, stop):
        return "matrix-chunk-%012d-%012d" % (start, stop)

    def _usable(self):
        try:
            mm = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return False
        ok = mm.shape == self.shape and mm.dtype == MATRIX_DTYPE and mm.flags.c_contiguous
        del mm
        return ok

    def _prepare(self):
        """Create the (sparse) file unless a usable one is there; a new file voids the old markers."""
        if self._ready:
            return
        folder = self.checkpoint.prepared_folder()
        if not (os.path.isfile(self.path) and self._usable()):
            for name in os.listdir(folder):
                if name.startswith("matrix-chunk-"):
                    os.remove(os.path.join(folder, name))
            mm = np.lib.format.open_memmap(self.path, mode="w+", dtype=MATRIX_DTYPE, shape=self.shape)
            mm.flush()
            del mm
        self._ready = True

    def load_chunk(self, start, stop):
        self._prepare()
        if self.checkpoint.load_array(self._marker(start, stop)) is None:
            return None
        mm = np.load(self.path, mmap_mode="r", allow_pickle=False)
        try:
            return np.negative(mm[:, start:stop])
        finally:
            del mm

    def save_chunk(self, start, stop, values):
        self._prepare()
        mm = np.load(self.path, mmap_mode="r+", allow_pickle=False)
        try:
            np.negative(np.asarray(values, dtype=np.float64), out=mm[:, start:stop])
            mm.flush()
        finally:
            del mm
        self.checkpoint.save_array(self._marker(start, stop), np.array([start, stop], dtype=np.int64))

    def load_array(self, name):
        return self.checkpoint.load_array(name)

    def save_array(self, name, values):
        self.checkpoint.save_array(name, values)

    def publish(self, path):
        """Move the finished file to ``path`` (an atomic rename; across file systems a copy to a
        temporary file next to ``path``, then a rename)."""
        self._prepare()
        path = os.path.abspath(path)
        try:
            os.replace(self.path, path)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            with atomic_path(path) as tmp:
                shutil.copyfile(self.path, tmp)
            os.remove(self.path)
        return path
