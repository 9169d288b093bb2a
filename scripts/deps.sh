#!/usr/bin/env bash
# Installs, with apt-get, whatever lori's build and tests need that this Debian machine lacks.
# Idempotent and quiet when everything is present. Needs root (or sudo) only when something is missing.
set -euo pipefail
pkgs=(cmake make g++ pkg-config libeigen3-dev doctest-dev libbenchmark-dev nlohmann-json3-dev python3 python3-venv)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# A python3 from elsewhere (pyenv, conda) with a working venv module makes Debian's python3 packages optional.
if command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  missing=("${missing[@]/python3-venv}"); missing=("${missing[@]/python3}")
fi
read -r -a missing <<<"${missing[*]}"
if ((${#missing[@]})); then
  echo "lori: installing missing packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
