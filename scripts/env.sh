# Sourced by the README's commands: creates or refreshes .venv with the given extras.
# Usage: source scripts/env.sh test   (or: bench, train, "test,bench")
set -euo pipefail
extras="${1:-test}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${NEXUS_PYTHON:-python3}"
venv="$root/.venv"
version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }
clear=""
if [ -x "$venv/bin/python" ] && [ "$(version "$venv/bin/python")" != "$(version "$python")" ]; then
  # NEXUS_PYTHON names another Python than the one .venv was made with.
  echo "[env] $venv has Python $(version "$venv/bin/python"), not $(version "$python"): recreating it"
  clear="--clear"
fi
if [ -n "$clear" ] || [ ! -x "$venv/bin/python" ]; then
  echo "[env] creating $venv with $($python --version)"
  "$python" -m venv $clear "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
echo "[env] installing nexus-optax[$extras] into $venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root[$extras]"
export PATH="$venv/bin:$PATH"
echo "[env] ready in ${SECONDS} s"
cd "$root"
