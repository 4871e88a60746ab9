#!/usr/bin/env python3
"""Peer runner: Pillow (PyPI wheel), workload W1 or W2.

usage: w1-pillow.py CORPUS OUTDIR [THREADS] [REPS] [--workload W1|W2]
       PILLOW_POOL=process|thread (default process)

Concurrency: THREADS=1 runs in this process. THREADS>1 uses a
multiprocessing.Pool of THREADS forked worker processes (the usual way to
scale Pillow; PILLOW_POOL=thread uses a thread pool instead). The pool is
started before the clock starts. Peak memory of a process pool is the SUM of
the processes: run this under lib/measure.py (run.sh does) to see it.

Per output: Image.open -> im.thumbnail((size, size), LANCZOS) (Pillow's own
thumbnail path: JPEG draft() DCT-scaling to >= 2x the target, reduce() by an
integer factor to >= 2x, then Lanczos) -> ImageOps.exif_transpose -> if the
source has an embedded ICC profile, ImageCms transform to sRGB (else CMYK and
other modes are converted to RGB) -> save without metadata.
The AVIF encoder (W2) is given max_threads=PEER_INNER_THREADS (default 1).
"""
import os
import sys

sys.dont_write_bytecode = True  # keep the repository free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import wcommon as wc  # noqa: E402

wc.reexec_in_venv()

import io  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402

import PIL  # noqa: E402
from PIL import Image, ImageCms, ImageOps  # noqa: E402

INNER = int(os.environ.get("PEER_INNER_THREADS", "1"))
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
WORKLOAD = "W1"


def to_srgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(im, src, SRGB, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError):
            pass  # unusable profile: fall through to a plain conversion
    return im if im.mode == "RGB" else im.convert("RGB")


def process(src: str, base: str, workload: str) -> int:
    n = 0
    for size, fmt, q, suffix in wc.OUTPUTS[workload]:
        with Image.open(src) as im:
            icc = im.info.get("icc_profile")
            im.thumbnail((size, size), Image.Resampling.LANCZOS)
            ImageOps.exif_transpose(im, in_place=True)
            im = to_srgb(im, icc)
            im.info = {}  # strip: nothing from the source goes to the output
            out = base + suffix
            if fmt == "jpeg":
                im.save(out, "JPEG", quality=q, optimize=True, subsampling="4:2:0",
                        progressive=False)
            elif fmt == "webp":
                im.save(out, "WEBP", quality=q, method=4, lossless=False)
            elif fmt == "avif":
                im.save(out, "AVIF", quality=q, speed=9 - wc.AVIF_EFFORT,
                        subsampling="4:2:0", codec="aom", max_threads=INNER)
            else:
                raise ValueError(fmt)
        n += os.path.getsize(out)
    return n


def job(t):
    r, src, base = t
    try:
        return r, process(src, base, WORKLOAD), None
    except Exception as e:  # noqa: BLE001
        return r, 0, f"{src}: {type(e).__name__}: {e}"


def _init(workload: str) -> None:
    global WORKLOAD
    WORKLOAD = workload


def main() -> None:
    global WORKLOAD
    a = wc.parse_args("Pillow")
    WORKLOAD = a.workload
    files = wc.list_corpus(a.corpus)
    todo = wc.tasks(files, a.outdir, a.reps)
    mode = os.environ.get("PILLOW_POOL", "process")
    if not a.no_warmup:
        wd = os.path.join(a.outdir, "warmup")
        os.makedirs(wd, exist_ok=True)
        process(files[0], os.path.join(wd, "w"), a.workload)

    pool = None
    if a.threads > 1:
        if mode == "thread":
            from multiprocessing.pool import ThreadPool
            pool = ThreadPool(a.threads)
        else:
            import multiprocessing as mp
            pool = mp.get_context("fork").Pool(a.threads, initializer=_init,
                                               initargs=(a.workload,))
        pool.map(int, range(a.threads))  # make sure every worker is up
    conc = f"{a.threads} {'forked processes' if mode != 'thread' else 'threads'}" \
        if a.threads > 1 else "1 (in-process)"

    errors = 0
    bytes_rep0 = 0
    ru0s = resource.getrusage(resource.RUSAGE_SELF)
    ru0c = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    results = pool.imap(job, todo, chunksize=1) if pool else map(job, todo)
    for r, nbytes, err in results:
        if err:
            errors += 1
            print(err.splitlines()[0], file=sys.stderr)
        elif r == 0:
            bytes_rep0 += nbytes
    wall = time.perf_counter() - t0
    if pool:
        pool.close()
        pool.join()  # workers exit: their CPU time lands in RUSAGE_CHILDREN
    ru1s = resource.getrusage(resource.RUSAGE_SELF)
    ru1c = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1s.ru_utime + ru1s.ru_stime - ru0s.ru_utime - ru0s.ru_stime
           + ru1c.ru_utime + ru1c.ru_stime - ru0c.ru_utime - ru0c.ru_stime)
    n = len(files)
    wc.emit({
        "peer": "pillow",
        "version": f"Pillow {PIL.__version__}",
        "workload": a.workload,
        "threads": a.threads,
        "images": n,
        "wall_s": round(wall, 3),
        "images_per_s": round(n * a.reps / wall, 3),
        # self-reported: largest single process; lib/measure.py gives the tree sum
        "peak_rss_mb": round(max(ru1s.ru_maxrss, ru1c.ru_maxrss) / 1024.0, 1),
        "bytes_out": bytes_rep0,
        "reps": a.reps,
        "errors": errors,
        "cpu_s": round(cpu, 3),
        "concurrency": conc,
        "resize": "Image.thumbnail LANCZOS (draft to >=2x, reduce to >=2x, lanczos)",
        "encoder": wc.AVIF_SETTINGS + f", max_threads={INNER}" if a.workload == "W2" else
        f"jpeg: {wc.JPEG_SETTINGS}; webp: {wc.WEBP_SETTINGS}",
    })


if __name__ == "__main__":
    main()
