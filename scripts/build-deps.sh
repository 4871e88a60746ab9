#!/usr/bin/env bash
# Installs what building and testing Locality needs beyond Rust on a fresh Debian: a C
# toolchain, pkg-config, cmake and nasm (they build the bundled libjpeg-turbo 3 with
# its SIMD code), curl and python3-venv (the test services' scripts), promtool (Debian's
# prometheus package: only its promtool is used, to check the alert rules). Idempotent;
# uses apt-get.
set -euo pipefail
# rust-toolchain.toml pins Rust 1.95.0. Where rustup's stable toolchain already is that
# release (installed without network, say), it serves under the pinned name instead of
# being downloaded again; anywhere else rustup fetches the pinned toolchain itself.
pinned=$(sed -n 's/^channel = "\(.*\)"/\1/p' "$(dirname "$0")/../rust-toolchain.toml")
if command -v rustup >/dev/null && ! rustup toolchain list | grep -q "^$pinned-"; then
  stable=$(rustc +stable --print sysroot 2>/dev/null || true)
  if [ -n "$stable" ] && "$stable/bin/rustc" --version | grep -q "^rustc $pinned "; then
    host=$(basename "$stable" | sed 's/^stable-//')
    echo "[build-deps] Rust $pinned is the stable toolchain here: using it as $pinned-$host" >&2
    ln -s "$stable" "$(dirname "$stable")/$pinned-$host"
  fi
fi
missing=()
command -v cc >/dev/null || missing+=(build-essential)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v cmake >/dev/null || missing+=(cmake)
command -v nasm >/dev/null || missing+=(nasm)
command -v curl >/dev/null || missing+=(curl)
# promtool checks the alert rules (scripts/check-k8s.sh).
command -v promtool >/dev/null || missing+=(prometheus)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
[ "${#missing[@]}" -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
echo "[build-deps] apt-get install ${missing[*]}" >&2
$SUDO apt-get update -q >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
