# Sourced by the README's commands: creates or refreshes .venv with nexus-optax (editable) and
# the named dependency groups of pyproject.toml (PEP 735).
# Usage: source scripts/env.sh test   (or: train, bench, docs, "train,bench")
set -euo pipefail
groups="${1:-test}"
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
fi
unset -f _nexus_version
# `pip install --group` needs pip 25.1; older ones (Python 3.11's bundled 23.2) are upgraded.
if ! "$venv/bin/python" -c 'import sys
from importlib.metadata import version
sys.exit(tuple(map(int, version("pip").split(".")[:2])) < (25, 1))' 2>/dev/null; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "pip>=25.1"
fi
group_args=()
IFS=',' read -ra group_names <<<"$groups"
for group in "${group_names[@]}"; do group_args+=(--group "$root/pyproject.toml:$group"); done
echo "[env] installing nexus-optax and the groups $groups into $venv"
# Byte-compiling every installed file takes pip half its time; Python compiles what it imports.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile \
  -e "$root" "${group_args[@]}"
export PATH="$venv/bin:$PATH"
echo "[env] ready in ${SECONDS} s"
cd "$root"
