# Installed into the .venv's site-packages by scripts/setup-venv36.sh and
# imported at interpreter start by _cntk_mpi_shim.pth.
#
# CNTK 2.7 is linked against OpenMPI 1.10 (libmpi.so.12, libmpi_cxx.so.1) and
# `import cntk` also does ctypes.CDLL("libmpi.so.12") by bare name. We ship
# OpenMPI 4 libraries renamed/re-SONAMEd to those names in <venv>/lib/mpi-shim
# and preload them globally, so no LD_LIBRARY_PATH or system links are needed.
try:
    import ctypes as _ctypes
    import os as _os
    import sys as _sys

    _d = _os.path.join(_sys.prefix, "lib", "mpi-shim")
    if _os.path.isdir(_d):
        for _n in ("libmpi.so.12", "libmpi_cxx.so.1"):
            _p = _os.path.join(_d, _n)
            if _os.path.exists(_p):
                _ctypes.CDLL(_p, mode=_ctypes.RTLD_GLOBAL)
except Exception:  # never break interpreter start-up
    pass
