#!/usr/bin/env bash
# Installs everything rbdpy needs on Debian bookworm (run as root from the checkout).
# The virtualenv is built from /usr/bin/python3 on purpose: nbdkit's python plugin embeds that
# interpreter, and the plugin adds this venv's site-packages to its sys.path.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive
pkgs=(nbdkit nbdkit-plugin-python qemu-utils fio libnbd-bin python3-libnbd python3-venv python3-dev
      gcc ca-certificates)
# the kernel-attach VM test (tests/e2e) needs a few more; scripts/test.sh asks for them
if [ "${1:-}" = "--with-test-deps" ]; then
    pkgs+=(qemu-system-x86 busybox-static nbd-client e2fsprogs cpio kmod libc6-dev)
fi
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
fi
venv="$here/.venv"
if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip </dev/null
"$venv/bin/python" -m pip install -q -e "$here[test,bench]" </dev/null
echo "rbdpy installed in $venv"
