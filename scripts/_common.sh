# Shared helpers for scripts/setup-venv*.sh (sourced, not executed).
# shellcheck shell=bash

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log()  { printf '==> %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die()  { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# Hash of everything that determines the content of a venv. A change to any of
# these files makes the next `make venv*` redo the setup.
inputs_hash() {
    local extra="$1"
    (
        cd "$REPO_ROOT"
        printf '%s\n' "$extra"
        cat setup.cfg setup.py pyproject.toml scripts/_common.sh scripts/_cntk_mpi_shim.py "$0" 2>/dev/null
    ) | sha256sum | cut -c1-16
}

# Run pip quietly, dropping the noise this machine's pip configuration prints
# (an extra index that is a directory without some projects: pip 21+ says
# "WARNING: Location '...' is ignored", pip 18 "  Url '...' is ignored"). Keeps pip's exit code.
pipq() {
    local py="$1"; shift
    "$py" -m pip "$@" -q --disable-pip-version-check 2>&1 \
        | { grep -v -E "^(WARNING: Location|  Url) '[^']*' is ignored" || true; }
    return "${PIPESTATUS[0]}"
}

# Exit the calling setup script early when venv $1 was already built by interpreter $2 from the
# current inputs; otherwise set STAMP to the file to touch once the setup has succeeded.
exit_if_up_to_date() {
    local venv="$1" py="$2"
    STAMP="$venv/.setup-stamp-$(inputs_hash "$("$py" -c 'import sys; print(sys.version)') $py")"
    if [ -f "$STAMP" ] && [ -x "$venv/bin/python" ]; then
        echo "$venv is up to date"
        exit 0
    fi
}
