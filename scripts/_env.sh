# Sourced by scripts/*: create .venv with only the system Python and install the project into it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=".venv/.installed-$(cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    python -m pip install -q --upgrade pip
    python -m pip install -q -c constraints.txt -e '.[dev]'
    touch "$stamp"
fi
