#!/usr/bin/env python3
"""Peer runner: libvips (Debian's libvips42) through pyvips, workload W1 or W2.

usage: w1-vips.py CORPUS OUTDIR [THREADS] [REPS] [--workload W1|W2]

Concurrency: THREADS Python threads each take one source image at a time
(THREADS images in flight); each libvips pipeline runs with VIPS_CONCURRENCY
worker threads (default 1, override with PEER_INNER_THREADS), so the total
number of busy threads is about THREADS, like a rayon pool of THREADS threads.
pyvips releases the GIL while libvips runs. The libvips operation cache is
disabled so repeated passes over the same files redo all the work.

Per output: pyvips.Image.thumbnail(file, size, height=size, size="down"),
i.e. libvips' own thumbnail path: JPEG shrink-on-load (leaving a factor of at
least 2 for the final step), box shrink, lanczos3 reduce, EXIF auto-rotate.
Sources with an embedded ICC profile, or CMYK, are converted to sRGB with it
(export_profile="srgb"); the others are left as they are (already sRGB).
"""
import os
import sys

sys.dont_write_bytecode = True  # keep the repository free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import wcommon as wc  # noqa: E402

wc.reexec_in_venv()
INNER = os.environ.get("PEER_INNER_THREADS", "1")
os.environ["VIPS_CONCURRENCY"] = INNER  # read once, when libvips starts

import resource  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import pyvips  # noqa: E402

pyvips.cache_set_max(0)


def needs_srgb_transform(src: str) -> bool:
    h = pyvips.Image.new_from_file(src)  # header only
    return h.get_typeof("icc-profile-data") != 0 or h.interpretation == "cmyk"


META_PREFIXES = ("exif-", "xmp-", "iptc-", "icc-profile-", "gainmap", "heif-", "jpeg-thumbnail")


def strip_meta(im):
    """Drop metadata before saving. Debian's libvips 8.14.1 webpsave ignores
    strip=True (fixed upstream in 8.14.2), so do it by hand for every format."""
    im = im.copy()
    for name in im.get_fields():
        if name.startswith(META_PREFIXES) or name in ("orientation", "interlaced"):
            im.remove(name)
    return im


def process(src: str, base: str, workload: str) -> int:
    kw_profile = {"export_profile": "srgb"} if needs_srgb_transform(src) else {}
    n = 0
    for size, fmt, q, suffix in wc.OUTPUTS[workload]:
        im = pyvips.Image.thumbnail(src, size, height=size, size="down", **kw_profile)
        im = strip_meta(im)
        out = base + suffix
        if fmt == "jpeg":
            im.jpegsave(out, Q=q, strip=True, optimize_coding=True, interlace=False,
                        subsample_mode="on", trellis_quant=False)
        elif fmt == "webp":
            im.webpsave(out, Q=q, strip=True, effort=4, lossless=False)
        elif fmt == "avif":
            im.heifsave(out, Q=q, strip=True, compression="av1", encoder="aom",
                        effort=wc.AVIF_EFFORT, bitdepth=8, subsample_mode="on")
        else:
            raise ValueError(fmt)
        n += os.path.getsize(out)
    return n


def main() -> None:
    a = wc.parse_args("libvips/pyvips")
    files = wc.list_corpus(a.corpus)
    todo = wc.tasks(files, a.outdir, a.reps)
    if not a.no_warmup:
        wd = os.path.join(a.outdir, "warmup")
        os.makedirs(wd, exist_ok=True)
        process(files[0], os.path.join(wd, "w"), a.workload)

    errors = 0
    bytes_rep0 = 0

    def job(t):
        r, src, base = t
        try:
            return r, process(src, base, a.workload), None
        except Exception as e:  # noqa: BLE001
            return r, 0, f"{src}: {e}"

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=a.threads) as ex:
        for r, nbytes, err in ex.map(job, todo):
            if err:
                errors += 1
                print(err.splitlines()[0], file=sys.stderr)
            elif r == 0:
                bytes_rep0 += nbytes
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)

    n = len(files)
    wc.emit({
        "peer": "libvips",
        "version": "libvips %d.%d.%d (Debian), pyvips %s" % (
            pyvips.version(0), pyvips.version(1), pyvips.version(2), pyvips.__version__),
        "workload": a.workload,
        "threads": a.threads,
        "images": n,
        "wall_s": round(wall, 3),
        "images_per_s": round(n * a.reps / wall, 3),
        "peak_rss_mb": round(ru1.ru_maxrss / 1024.0, 1),
        "bytes_out": bytes_rep0,
        "reps": a.reps,
        "errors": errors,
        "cpu_s": round(ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime, 3),
        "concurrency": f"{a.threads} threads x VIPS_CONCURRENCY={INNER}",
        "resize": "vips_thumbnail (shrink-on-load leaving >=2x, shrink+reduce lanczos3)",
        "encoder": wc.AVIF_SETTINGS if a.workload == "W2" else
        f"jpeg: {wc.JPEG_SETTINGS}; webp: {wc.WEBP_SETTINGS}",
    })


if __name__ == "__main__":
    main()
