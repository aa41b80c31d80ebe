#!/usr/bin/env bash
# Installs the Debian packages listed in hack/debian-packages.txt that are missing. Needs root (CI and
# the lab run as root); without root it only lists what is missing.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mapfile -t wanted < <(grep -v '^\s*#' "$root/hack/debian-packages.txt" | awk 'NF {print $1}')

missing=()
for pkg in "${wanted[@]}"; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]} == 0)); then
	echo "setup: Debian packages present: ${wanted[*]}"
	exit 0
fi
if ((EUID != 0)); then
	echo "setup: missing Debian packages (run as root to install): ${missing[*]}" >&2
	exit 1
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
