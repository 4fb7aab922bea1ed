"""The progress bar every long computation shares (solvers, curvature products): tqdm on stderr,
or a plain stderr line per second where tqdm is missing."""
import sys
import time

try:
    from tqdm import tqdm as _tqdm
except ImportError:           # tqdm is a dependency; a bare install still reports progress
    _tqdm = None

__all__ = ["Progress"]


class Progress(object):
    """A tqdm bar on stderr showing the residual (a plain stderr line per second without tqdm)."""

    def __init__(self, enabled, total, desc, unit="it"):
        self.bar = None
        self.plain = None
        if not enabled:
            return
        if _tqdm is not None:
            self.bar = _tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)
        else:
            self.plain = [desc, 0, time.time()]

    def update(self, residual=None, n=1):
        if self.bar is not None:
            self.bar.update(n)
            if residual is not None:
                self.bar.set_postfix_str("residual %.2e" % residual, refresh=False)
        elif self.plain is not None:
            self.plain[1] += n
            if time.time() - self.plain[2] >= 1.0:
                self.plain[2] = time.time()
                sys.stderr.write("%s: %d, residual %s\n" % (self.plain[0], self.plain[1],
                                                           "?" if residual is None else "%.2e" % residual))

    def close(self):
        if self.bar is not None:
            self.bar.close()
