#!/usr/bin/env bash
# Builds the Python binding (debug, shared target/) into a venv and runs its
# pytest suite. Usable from any cwd; needs only Python >= 3.10 with venv+pip
# and the Rust toolchain.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VENV="$ROOT/target/py-venv"
PYTHON="${PYTHON:-python3}"
started=$SECONDS

if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating venv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
echo "== installing pinned tools (requirements-dev.txt)"
"$VENV/bin/python" -m pip install --disable-pip-version-check --quiet -r "$HERE/requirements-dev.txt"

# The venv must hold exactly the pinned set (a stale or hand-modified venv fails).
expected="$("$VENV/bin/python" - "$HERE/requirements-dev.txt" <<'PY'
import sys
from packaging.markers import Marker
names = []
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    spec, _, marker = line.partition(";")
    if marker.strip() and not Marker(marker.strip()).evaluate():
        continue
    names.append(spec.strip().lower().replace("_", "-"))
print("\n".join(sorted(names)))
PY
)"
actual="$("$VENV/bin/python" -m pip freeze --disable-pip-version-check --exclude mailsync | tr 'A-Z_' 'a-z-' | sort)"
if [ "$expected" != "$actual" ]; then
    echo "venv $VENV does not match requirements-dev.txt:" >&2
    diff <(echo "$expected") <(echo "$actual") >&2 || true
    echo "delete $VENV and rerun, or update requirements-dev.txt" >&2
    exit 1
fi

echo "== maturin develop (debug)"
cd "$HERE"
VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" "$VENV/bin/maturin" develop --quiet

echo "== local stack (tests/stack/up: idempotent, never stopped here)"
"$ROOT/tests/stack/up"

echo "== pytest (stub parity is tests/test_stub_parity.py)"
"$VENV/bin/python" -m pytest "$HERE/tests" -p no:cacheprovider
echo "== bindings-python: $((SECONDS - started)) s"
