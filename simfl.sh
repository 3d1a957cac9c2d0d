#!/usr/bin/env bash
# Entry point for people and CI:  ./simfl.sh run [SCENARIO] [options]   |   ./simfl.sh test [pytest args]
# Sets everything up on first use (see scripts/bootstrap.sh), then runs simfl or the tests.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cmd="${1:-run}"; [ $# -gt 0 ] && shift
[ "$cmd" = test ] && export SIMFL_WITH_TSHARK=1
"$root/scripts/bootstrap.sh"
tc=$(ls /usr/lib/*/libtcmalloc_minimal.so.4 2>/dev/null | head -n1 || true)
[ -n "$tc" ] && export LD_PRELOAD="$tc${LD_PRELOAD:+:$LD_PRELOAD}"
cd "$root"
case "$cmd" in
  test) exec "$root/.venv/bin/python" -m pytest -q "$@" ;;
  *) exec "$root/.venv/bin/simfl" "$cmd" "$@" ;;
esac
