#!/usr/bin/env bash
# Refreshes deny/advisory-db, the RustSec advisory database snapshot that
# scripts/check-deps.sh audits against, from a clone of the database (a path, or
# a git URL where the network allows). Commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
source=${1:?usage: scripts/update-advisory-db.sh PATH-OR-GIT-URL-OF-advisory-db}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone --quiet --depth 1 "$source" "$work/db"
rm -rf deny/advisory-db/crates deny/advisory-db/rust
git -C "$work/db" archive HEAD crates rust LICENSE.txt support.toml | tar -x -C deny/advisory-db
commit=$(git -C "$work/db" rev-parse HEAD)
date=$(git -C "$work/db" show -s --format=%cI HEAD)
sed -i "s/^commit = .*/commit = \"$commit\"/; s/^date = .*/date = \"$date\"/" deny/advisory-db/SNAPSHOT
echo "deny/advisory-db: $commit of $date"
