#!/usr/bin/env bash
# Builds the manual in docs/ with mdBook into target/book and checks every link in it
# (mdbook-linkcheck2: links between chapters, to headings, and to the repository's
# files; the web is not fetched). Installs both when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
MDBOOK_VERSION=0.5.4
LINKCHECK_VERSION=0.13.0
if [ "$(mdbook --version 2>/dev/null)" != "mdbook v$MDBOOK_VERSION" ]; then
    echo "check-docs: installing mdbook $MDBOOK_VERSION" >&2
    cargo install --locked --quiet mdbook --version "$MDBOOK_VERSION"
fi
if ! mdbook-linkcheck2 --version 2>/dev/null | grep -q "$LINKCHECK_VERSION"; then
    echo "check-docs: installing mdbook-linkcheck2 $LINKCHECK_VERSION" >&2
    cargo install --locked --quiet mdbook-linkcheck2 --version "$LINKCHECK_VERSION"
fi
# The README is not a chapter, so its links are checked as the book's are: they
# point into docs/ and the repository.
mdbook build docs
python3 - <<'PY'
import pathlib, re, sys
root = pathlib.Path(".")
broken = []
text = (root / "README.md").read_text()
for target in re.findall(r"\]\(([^)\s]+)\)", text):
    if re.match(r"^[a-z]+://", target) or target.startswith("#"):
        continue
    path = target.split("#", 1)[0]
    if not (root / path).exists():
        broken.append(target)
if broken:
    sys.exit(f"README.md: links to missing files: {broken}")
lines = text.count("\n")
if lines > 250:
    sys.exit(f"README.md has {lines} lines; the rest belongs in docs/")
PY
echo "[check-docs] the book builds, its links and the README's resolve" >&2
