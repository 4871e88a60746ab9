#!/usr/bin/env bash
# Installs what building Locality needs beyond Rust: cmake and nasm, which build the
# bundled libjpeg-turbo 3 with its SIMD code. Idempotent; uses apt-get (Debian).
set -euo pipefail
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v nasm >/dev/null || missing+=(nasm)
[ "${#missing[@]}" -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
echo "[build-deps] apt-get install ${missing[*]}" >&2
$SUDO apt-get update -q >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
