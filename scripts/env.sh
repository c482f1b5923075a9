# Sourced by the README's commands: creates or refreshes .venv with the given extras.
# Usage: source scripts/env.sh test   (or: bench, train, "test,bench")
set -euo pipefail
extras="${1:-test}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${NEXUS_PYTHON:-python3}"
venv="$root/.venv"
_nexus_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }
want="$(_nexus_version "$python")" || {
  echo "[env] error: cannot run '$python'; set NEXUS_PYTHON to an installed Python 3.11 or 3.12" >&2
  exit 1
}
# A .venv made with another Python than NEXUS_PYTHON, or whose interpreter has gone, is
# replaced: otherwise the 3.12 command would quietly test on the 3.11 one.
if [ "$(_nexus_version "$venv/bin/python" 2>/dev/null)" != "$want" ]; then
  echo "[env] creating $venv with Python $want"
  "$python" -m venv --clear "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
unset -f _nexus_version
echo "[env] installing nexus-optax[$extras] into $venv"
# Byte-compiling every installed file takes pip half its time; Python compiles what it imports.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile -e "$root[$extras]"
export PATH="$venv/bin:$PATH"
echo "[env] ready in ${SECONDS} s"
cd "$root"
