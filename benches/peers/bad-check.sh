#!/usr/bin/env bash
# What does each peer do with hostile input? For every file in BADDIR and every peer,
# decode + auto-orient + fit 320x320 + encode JPEG q80 (the smallest W1 output), with the
# library's DEFAULT limits, under a timeout. Prints one JSON line per (file, peer) and then
# a Markdown table. This is not a benchmark: it shows what the peers accept and reject.
#
# usage: bad-check.sh [BADDIR] [TIMEOUT_S]     (default fixtures/bad, 30 s)
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BAD=${1:-$HERE/../../fixtures/bad}
TMO=${2:-30}
export PEERS_HOME=${PEERS_HOME:-$HOME/.cache/peers}
PY="$PEERS_HOME/venv/bin/python"
T=$(mktemp -d "${TMPDIR:-/tmp}/bad-check.XXXXXX")
trap 'rm -rf "$T"' EXIT

cat > "$T/vips.py" <<'EOF'
import json, os, sys
os.environ["VIPS_CONCURRENCY"] = "1"
import pyvips
f = sys.argv[1]
try:
    im = pyvips.Image.thumbnail(f, 320, height=320, size="down")
    buf = im.jpegsave_buffer(Q=80, strip=True)
    print(json.dumps({"outcome": "ok", "detail": f"{im.width}x{im.height}, {len(buf)} B"}))
except pyvips.Error as e:
    msg = " ".join(str(e).split())[:160]
    print(json.dumps({"outcome": "error", "detail": msg}))
EOF
cat > "$T/pillow.py" <<'EOF'
import io, json, sys
from PIL import Image, ImageOps
f = sys.argv[1]
try:
    with Image.open(f) as im:
        im.thumbnail((320, 320), Image.Resampling.LANCZOS)
        ImageOps.exif_transpose(im, in_place=True)
        im = im.convert("RGB")
        b = io.BytesIO()
        im.save(b, "JPEG", quality=80)
        print(json.dumps({"outcome": "ok", "detail": f"{im.width}x{im.height}, {b.tell()} B"}))
except Exception as e:  # noqa: BLE001
    msg = " ".join(f"{type(e).__name__}: {e}".split())[:160]
    print(json.dumps({"outcome": "error", "detail": msg}))
EOF
cat > "$T/sharp.cjs" <<'EOF'
const path = require('path');
const sharp = require(path.join(process.env.PEERS_HOME, 'node', 'node_modules', 'sharp'));
sharp.concurrency(1);
sharp(process.argv[2]).autoOrient().resize(320, 320, { fit: 'inside', withoutEnlargement: true })
  .jpeg({ quality: 80 }).toBuffer({ resolveWithObject: true })
  .then(({ data, info }) => console.log(JSON.stringify({ outcome: 'ok', detail: `${info.width}x${info.height}, ${data.length} B` })))
  .catch((e) => console.log(JSON.stringify({ outcome: 'error', detail: String(e.message).split(/\s+/).join(' ').slice(0, 160) })));
EOF

ALL="$T/all.jsonl"
for f in "$BAD"/*; do
  [ -f "$f" ] || continue
  for p in sharp vips pillow; do
    case $p in
      sharp) cmd=(node "$T/sharp.cjs" "$f") ;;
      vips) cmd=("$PY" "$T/vips.py" "$f") ;;
      pillow) cmd=("$PY" "$T/pillow.py" "$f") ;;
    esac
    line=$(timeout -s KILL "$TMO" "$HERE/lib/measure.py" -- "${cmd[@]}" 2>/dev/null)
    rc=$?
    if [ $rc -eq 137 ] || [ -z "$line" ]; then
      line="{\"outcome\": \"timeout/killed after ${TMO}s\"}"
    fi
    line=$(printf '%s' "$line" | python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
d.update({"peer": sys.argv[1], "file": sys.argv[2]})
if d.get("exit_code", 0) not in (0, None) and d.get("outcome") != "error":
    d["outcome"] = "crash (exit %s)" % d["exit_code"]
    d.pop("error", None)
print(json.dumps(d))' "$p" "$(basename "$f")")
    printf '%s\n' "$line" | tee -a "$ALL"
  done
done

python3 - "$ALL" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
files = sorted({r["file"] for r in rows})
peers = ["sharp", "vips", "pillow"]
by = {(r["file"], r["peer"]): r for r in rows}
print()
print("| file | " + " | ".join(peers) + " |")
print("|---|" + "---|" * len(peers))
for f in files:
    cells = []
    for p in peers:
        r = by.get((f, p), {})
        o = r.get("outcome", "?")
        extra = f" ({r['proc_wall_s']:.1f} s, {r['peak_rss_mb']:.0f} MB)" if "proc_wall_s" in r else ""
        det = r.get("detail", "")
        cells.append(f"{o}{extra}: {det}".replace("|", "/") if det else o + extra)
    print(f"| `{f}` | " + " | ".join(cells) + " |")
EOF
