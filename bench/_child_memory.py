"""Source text shared by the benchmarks that measure peak memory in a fresh child process
(``python -c CHILD``): ``status()`` reads the kernel's counters of that process."""

#: Prepended to a child script: ``status()`` -> {"VmHWM", "VmRSS", "RssAnon", "RssFile"} in MiB
#: (VmHWM: the peak resident set so far) from /proc/self/status.
STATUS_SOURCE = r"""
def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024.0     # MiB
    return out
"""
