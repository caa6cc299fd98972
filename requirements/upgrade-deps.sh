#!/usr/bin/env bash
# make upgrade-deps: move the tested dependency set forward on purpose.
#   1. recompile the lock against the newest releases that pyproject.toml allows (uv pip compile --upgrade)
#   2. install it into a scratch venv (.venv-upgrade) with the same torch the Makefile installs
#   3. run the default test suite there
#   4. print what changed; the new lock replaces the old one only when the tests pass
# Usage: PYTHON=python3 TORCH=torch==2.13.0 UV=.venv/bin/uv bash requirements/upgrade-deps.sh requirements/lock.txt
set -euo pipefail
lock=${1:-requirements/lock.txt}
: "${PYTHON:=python3}" "${TORCH:=torch==2.13.0}" "${UV:=uv}"
scratch=.venv-upgrade
candidate=$(mktemp --suffix=.txt)
trap 'rm -f "$candidate"' EXIT

compile_args=$(sed -n 's/^#    uv pip compile //p' "$lock" | sed 's/ -o [^ ]*//')
[ -n "$compile_args" ] || { echo "error: $lock has no 'uv pip compile' header line: regenerate it by hand first" >&2; exit 2; }
echo "== 1/4 compiling the newest allowed set: uv pip compile $compile_args --upgrade"
# shellcheck disable=SC2086
"$UV" pip compile $compile_args --upgrade -q -o "$candidate"
# keep the header naming the command that makes the file, not the temporary path
sed -i "s|-o $candidate|-o $lock|; s|--upgrade -q ||" "$candidate"

echo "== 2/4 installing it into $scratch (torch: $TORCH)"
rm -rf "$scratch"
"$PYTHON" -m venv "$scratch"
"$scratch/bin/python" -m pip install -q --disable-pip-version-check "$TORCH"
"$scratch/bin/python" -m pip install -q --disable-pip-version-check -c "$candidate" -e ".[dev]"

echo "== 3/4 default test suite in $scratch"
status=0
DBS_LOCK_FILE="$candidate" "$scratch/bin/python" -m pytest -q -x || status=$?

echo "== 4/4 what changed ($lock -> newest)"
"$PYTHON" - "$lock" "$candidate" <<'EOF'
import re, sys
def pins(path):
    out = {}
    for line in open(path):
        m = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)(\s*;.*)?$", line.strip())
        if m:
            out.setdefault(m.group(1).lower(), set()).add(m.group(2))
    return out
old, new = pins(sys.argv[1]), pins(sys.argv[2])
rows = []
for name in sorted(old.keys() | new.keys()):
    a, b = ",".join(sorted(old.get(name, {"-"}))), ",".join(sorted(new.get(name, {"-"})))
    if a != b:
        rows.append(f"  {name:32s} {a:>14s} -> {b}")
print("\n".join(rows) if rows else "  nothing: the lock is already the newest allowed set")
EOF
if [ "$status" -ne 0 ]; then
  echo "tests FAILED on the newest set: $lock is unchanged; fix the code or add an upper bound in pyproject.toml" >&2
  exit "$status"
fi
cp "$candidate" "$lock"
rm -rf "$scratch"
echo "tests passed: $lock updated. Run 'make install' (or rm -rf .venv) to move .venv onto it, then commit the lock."
