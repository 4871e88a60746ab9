#!/usr/bin/env bash
# Installs s3s-fs 0.14.1 with ordered-listing.patch (why: the patch's header) into
# $1/bin/s3s-fs, once; prints nothing else on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$1
[ -x "$root/bin/s3s-fs" ] && exit 0
echo "[s3s-fs] building s3s-fs 0.14.1 with $here/ordered-listing.patch (about 2 minutes, once)" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/probe/src"
printf '[package]\nname = "probe"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\ns3s-fs = "=0.14.1"\n' > "$work/probe/Cargo.toml"
: > "$work/probe/src/lib.rs"
manifest=$(cd "$work/probe" && cargo metadata --format-version 1 2>/dev/null \
  | python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "s3s-fs"))')
cp -r "$(dirname "$manifest")" "$work/s3s-fs"
chmod -R u+w "$work/s3s-fs"
(cd "$work/s3s-fs" && sed -n '/^--- a\/src\/s3.rs/,$p' "$here/ordered-listing.patch" | patch -p1 --quiet)
cargo install -q --path "$work/s3s-fs" --features binary --locked --root "$root" >&2
