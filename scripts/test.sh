#!/usr/bin/env bash
# Installs everything, then runs the whole test suite. pytest's "no tests collected" (exit 5)
# is a failure here, never a pass.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/install.sh" --with-test-deps || exit 1
cd "$here"
"$here/.venv/bin/python" -m ruff check rbdpy nbdplugin tests bench || exit 1
"$here/.venv/bin/python" -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then echo "no tests collected: failing"; exit 1; fi
exit $rc
