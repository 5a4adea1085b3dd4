# shellcheck shell=bash
# The Python tools the tests use, in one virtualenv outside the clone:
# the official Verda SDK (driven by tests/verda_sdk/scenario.py) and
# schemathesis (scripts/fuzz-api). Source this file, then:
#
#   venv=$(python_venv)
#
# The virtualenv is made, or remade when the pinned versions below change,
# and answered at once otherwise.

PYTHON_REQUIREMENTS="verda==1.25.0
schemathesis==4.32.5"

python_venv() {
    local venv="${XDG_CACHE_HOME:-$HOME/.cache}/tessera/python-venv"
    local stamp="$venv/.tessera-requirements"
    if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$PYTHON_REQUIREMENTS" ]; then
        echo "$venv"
        return 0
    fi
    command -v python3 >/dev/null || { echo "python3 is missing" >&2; return 1; }
    rm -rf "$venv"
    python3 -m venv "$venv" >&2 || return 1
    # shellcheck disable=SC2086
    "$venv/bin/pip" install -q $PYTHON_REQUIREMENTS >&2 || return 1
    printf '%s' "$PYTHON_REQUIREMENTS" >"$stamp"
    echo "$venv"
}
