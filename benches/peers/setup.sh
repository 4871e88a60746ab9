#!/usr/bin/env bash
# Install the peer image libraries used by the W1/W2 benchmarks.
#
#   libvips (Debian packages libvips42 + libvips-tools) and its Python binding pyvips
#   Pillow (PyPI wheel, bundles its own libjpeg-turbo/libwebp/libavif)
#   sharp (npm, ships its own prebuilt libvips)
#
# Everything except the Debian packages goes under ${PEERS_HOME:-$HOME/.cache/peers}:
#   $PEERS_HOME/venv        Python venv with pyvips + Pillow
#   $PEERS_HOME/node        npm prefix with sharp
#   $PEERS_HOME/versions.json  what got installed
# Nothing is written into the repository. Idempotent: re-running only installs what is missing
# or at the wrong version. Needs root (or sudo) for apt-get the first time.
set -euo pipefail

PEERS_HOME=${PEERS_HOME:-$HOME/.cache/peers}
# Pinned so that every machine measures the same peers; override to try others.
PILLOW_VERSION=${PILLOW_VERSION:-13.0.0}
PYVIPS_VERSION=${PYVIPS_VERSION:-3.2.0}
SHARP_VERSION=${SHARP_VERSION:-0.35.5}

log() { printf '[peers/setup] %s\n' "$*" >&2; }
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

# --- 1. Debian packages -------------------------------------------------------
apt_pkgs=(libvips42 libvips-tools)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# venv module: on stock Debian python3 it lives in python3-venv
PY=${PEERS_PYTHON:-python3}
if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then missing+=(python3-venv); fi
if ! command -v npm >/dev/null 2>&1; then missing+=(nodejs npm); fi
if [ "${#missing[@]}" -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  $SUDO apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

mkdir -p "$PEERS_HOME"

# --- 2. Python venv: pyvips + Pillow ------------------------------------------
VENV="$PEERS_HOME/venv"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV"
  "$PY" -m venv "$VENV"
fi
have_py() { # have_py dist version
  "$VENV/bin/python" - "$1" "$2" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
sys.exit(0 if version(sys.argv[1]) == sys.argv[2] else 1)
EOF
}
if ! have_py pillow "$PILLOW_VERSION" || ! have_py pyvips "$PYVIPS_VERSION"; then
  log "pip install pillow==$PILLOW_VERSION pyvips==$PYVIPS_VERSION"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    "pillow==$PILLOW_VERSION" "pyvips==$PYVIPS_VERSION" >&2
fi
# quality.py (SSIM against a full-resolution reference)
if ! "$VENV/bin/python" -c 'import skimage, numpy' >/dev/null 2>&1; then
  log "pip install scikit-image"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check scikit-image >&2
fi

# --- 3. sharp under $PEERS_HOME/node -------------------------------------------
NODE_PREFIX="$PEERS_HOME/node"
mkdir -p "$NODE_PREFIX"
[ -f "$NODE_PREFIX/package.json" ] || echo '{"name":"peers-sharp","private":true}' > "$NODE_PREFIX/package.json"
cur_sharp=$(node -e 'try{console.log(require(process.argv[1]+"/node_modules/sharp/package.json").version)}catch(e){console.log("")}' "$NODE_PREFIX")
if [ "$cur_sharp" != "$SHARP_VERSION" ]; then
  log "npm install sharp@$SHARP_VERSION into $NODE_PREFIX"
  (cd "$NODE_PREFIX" && npm install --no-audit --no-fund --loglevel=error --save-exact "sharp@$SHARP_VERSION" >&2)
fi

# --- 4. Smoke test + versions --------------------------------------------------
# Each library is queried in its own process: loading libvips (Debian's libjpeg,
# libwebp, lcms2 ...) and Pillow (its own bundled copies) into one process lets
# symbols bind to the wrong copy, and the versions reported would be wrong.
"$VENV/bin/python" - "$PEERS_HOME/versions.json" "$NODE_PREFIX" "$VENV/bin/python" <<'EOF'
import json, subprocess, sys
out, node_prefix, py = sys.argv[1:4]
def run(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
v = {}
v["libvips_debian"] = run("dpkg-query", "-W", "-f=${Version}", "libvips42")
v.update(json.loads(run(py, "-c", r"""
import json, pyvips
v = {"libvips": "%d.%d.%d" % (pyvips.version(0), pyvips.version(1), pyvips.version(2)),
     "pyvips": pyvips.__version__, "pyvips_mode": "API" if pyvips.API_mode else "ABI"}
try:
    pyvips.Image.black(16, 16, bands=3).heifsave_buffer(compression="av1", Q=60)
    v["libvips_heifsave_av1"] = True
except Exception as e:
    v["libvips_heifsave_av1"] = False
    v["libvips_heifsave_av1_error"] = (str(e).splitlines() or [repr(e)])[0]
print(json.dumps(v))
""")))
v.update(json.loads(run(py, "-c", r"""
import json, PIL
from PIL import features
v = {"pillow": PIL.__version__}
for k, lib in (("jpeg", "libjpeg_turbo"), ("webp", "webp"), ("avif", "avif"), ("lcms2", "littlecms2")):
    try:
        v["pillow_" + k] = features.version(lib) or False
    except Exception:
        v["pillow_" + k] = False
print(json.dumps(v))
""")))
js = ("const s=require(process.argv[1]+'/node_modules/sharp');"
      "console.log(JSON.stringify({sharp:require(process.argv[1]+'/node_modules/sharp/package.json').version,"
      "versions:s.versions,heif:s.format.heif.output}))")
sj = json.loads(run("node", "-e", js, node_prefix))
v["sharp"] = sj["sharp"]
v["sharp_libvips"] = sj["versions"].get("vips")
v["sharp_bundled"] = sj["versions"]
v["node"] = run("node", "--version")
v["python"] = sys.version.split()[0]
with open(out, "w") as f:
    json.dump(v, f, indent=1, sort_keys=True)
print(json.dumps(v, sort_keys=True))
EOF
log "ok: versions in $PEERS_HOME/versions.json"
