#!/usr/bin/env bash
# Idempotent set-up: virtual environment, Python packages (torch pinned to the local CPU build), Fashion-MNIST data.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
stamp="$venv/.simfl-stamp"
want=$(cat "$root/pyproject.toml" "$root/constraints.txt" | sha256sum | cut -c1-16)
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "simfl: setting up $venv (first run only)..." >&2
  # the dev extra's ns3 package (ns-3 with cppyy bindings) compiles cppyy's C++ extension: it needs g++
  if ! command -v g++ >/dev/null; then
    as_root apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq g++ >&2
  fi
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2 || true
  "$venv/bin/pip" install -q -c "$root/constraints.txt" -e "$root[dev]" >&2
  echo "$want" > "$stamp"
fi
need=()
data="${SIMFL_DATA:-/usr/share/datasets/fashion-mnist}"
[ -f "$data/train-images-idx3-ubyte.gz" ] || need+=(dataset-fashion-mnist)
ls /usr/lib/*/libtcmalloc_minimal.so.4 >/dev/null 2>&1 || need+=(libtcmalloc-minimal4)
if [ "${SIMFL_WITH_TSHARK:-0}" = 1 ] && ! command -v tshark >/dev/null; then need+=(tshark); fi
if [ ${#need[@]} -gt 0 ]; then
  echo "simfl: installing Debian packages: ${need[*]}" >&2
  as_root apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}" >&2
fi
