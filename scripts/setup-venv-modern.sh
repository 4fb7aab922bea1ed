#!/usr/bin/env bash
# Build .venv-modern: the default python3 (3.11 here), numpy, scipy, tqdm,
# pytest, hypothesis and this package (editable); no CNTK.
# Idempotent (stamp keyed on the packaging files and these scripts).
# Usage: scripts/setup-venv-modern.sh [VENV_DIR]; PYTHON_MODERN overrides python3.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
cd "$REPO_ROOT"

VENV="${1:-.venv-modern}"
PY="${PYTHON_MODERN:-python3}"
command -v "$PY" >/dev/null 2>&1 || die "$PY not found (set PYTHON_MODERN to a Python >= 3.7)"
PY="$(command -v "$PY")"
# Resolve pyenv shims etc. to the real interpreter.
PY="$("$PY" -c 'import sys; print(sys.executable)')"

exit_if_up_to_date "$VENV" "$PY"

if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with $PY ($("$PY" -c 'import platform; print(platform.python_version())'))"
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
rm -f "$VENV"/.setup-stamp-*

log "numpy, scipy, tqdm, pytest, pytest-xdist, hypothesis, dask[distributed], import-linter"
pipq "$VPY" install numpy scipy tqdm pytest pytest-xdist hypothesis 'dask[distributed]' import-linter
log "pip install -e .  (cntk-influence)"
pipq "$VPY" install -e .

"$VPY" -c 'import numpy, scipy, influence' || die "imports fail in $VENV"
"$VENV/bin/influence" info >/dev/null || die "'$VENV/bin/influence info' fails"

touch "$STAMP"
log "$VENV ready"
