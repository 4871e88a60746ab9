#!/usr/bin/env bash
# Dependencies audited: cargo deny checks advisories, licences, bans and sources
# (deny.toml) without the network, against the RustSec advisory database snapshot
# kept in deny/advisory-db. Installs cargo-deny when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_DENY_VERSION=0.20.2
if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
    echo "check-deps: installing cargo-deny $CARGO_DENY_VERSION" >&2
    cargo install --locked --quiet cargo-deny --version "$CARGO_DENY_VERSION"
fi

# cargo-deny opens its database as a git checkout under $CARGO_HOME/advisory-dbs,
# named after the default source, and reads its age from the last commit. The
# snapshot becomes such a checkout, committed at the snapshot's own date, unless a
# newer database is already there.
snapshot_date=$(sed -n 's/^date = "\(.*\)"/\1/p' deny/advisory-db/SNAPSHOT)
database="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs/advisory-db-3157b0e258782691"
present_date=$(git -C "$database" show -s --format=%cI HEAD 2>/dev/null || echo "")
if [ -z "$present_date" ] || [ "$(date -d "$present_date" +%s)" -lt "$(date -d "$snapshot_date" +%s)" ]; then
    echo "check-deps: advisory database from the snapshot of $snapshot_date" >&2
    rm -rf "$database"
    mkdir -p "$database"
    cp -R deny/advisory-db/. "$database"
    git -C "$database" init --quiet
    git -C "$database" add --all
    GIT_AUTHOR_DATE="$snapshot_date" GIT_COMMITTER_DATE="$snapshot_date" \
        git -C "$database" -c user.name=locality -c user.email=locality@localhost \
        commit --quiet -m "RustSec advisory database snapshot"
fi

# cargo metadata needs every platform's manifests; fetched once, then offline.
cargo fetch --locked --quiet
cargo deny --offline --locked check
