"""Rights operations at scale: erase, export and sweep a subject holding N objects, on a
real S3 server (s3s-fs, an S3 implementation over a directory, started here; patched so
a listing's page costs one page: benches/s3s-fs/ordered-listing.patch) and on
local disk, each under a fresh `locality up`
(the sweep: `locality sweep`, which takes the region's sweep lock on RabbitMQ, started
here too). For each run it prints objects/s, the peak memory of the process doing the
work (VmHWM from /proc, reset before each operation) and the store requests it made
(from the S3 server's request log), and ends with one JSON line of every figure.

A benchmark, not a test: nothing is asserted. Run it with benches/rights-scale.sh.
"""

import argparse
import datetime
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
TENANT = "demo-eu"
SUBJECT = "bench-subject"
KEY = "demo-eu-key"
BODY = b"x" * 100


def log(text):
    print(text, file=sys.stderr, flush=True)


def progress(label, done, total, started):
    rate = done / max(time.monotonic() - started, 1e-6)
    print(f"\r[{label}] {done}/{total} ({rate:,.0f}/s)", end="", file=sys.stderr, flush=True)
    if done == total:
        print(file=sys.stderr, flush=True)


def keys(count, kind, asset="a"):
    """Originals (erase, export) or outputs, which expire after the tenant's 30 days."""
    name = "original/p.jpg" if kind == "original" else "outputs/thumb.jpg"
    return [f"{TENANT}/subjects/{SUBJECT}/assets/{asset}{n:07d}/{name}" for n in range(count)]


def seed(directory, count, kind, label, days_ago=2, asset="a"):
    """Writes the objects as files: a local store's directory, or s3s-fs's bucket
    directory (it serves a bucket's files as its objects). Outputs get their day index
    entries, as a worker writes them."""
    started = time.monotonic()
    # Written two days ago, as a subject's objects usually were: an erasure reads the
    # recorded origin only of objects written close to its request.
    written = time.time() - days_ago * 86400
    day = datetime.datetime.fromtimestamp(written, datetime.timezone.utc).strftime("%Y-%m-%d")
    for n, key in enumerate(keys(count, kind, asset)):
        path = pathlib.Path(directory) / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(BODY)
        os.utime(path, (written, written))
        if kind == "output":
            entry = pathlib.Path(directory) / TENANT / ".index/outputs" / day / SUBJECT / f"{asset}{n:07d}"
            entry.parent.mkdir(parents=True, exist_ok=True)
            entry.write_bytes(b"")
            os.utime(entry, (written, written))
        if (n + 1) % 10000 == 0 or n + 1 == count:
            progress(f"seed {label}", n + 1, count, started)


def vm_hwm_kib(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def reset_peak(pid):
    # Writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS.
    pathlib.Path(f"/proc/{pid}/clear_refs").write_text("5")


def api(base, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method, headers={
        "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"{}")


def wait_done(base, path, label, total):
    started = time.monotonic()
    while True:
        view = api(base, "GET", path)
        parts = view.get("regions") or {}
        counted = sum(int(part.get("objects_deleted") or part.get("objects") or 0)
                      for part in (parts.values() if isinstance(parts, dict) else parts))
        print(f"\r[{label}] {view.get('status')} {counted}/{total} "
              f"({time.monotonic() - started:.0f} s)", end="", file=sys.stderr, flush=True)
        if view.get("status") in ("done", "failed"):
            print(file=sys.stderr, flush=True)
            return view
        time.sleep(0.5)


class Requests:
    """Counts the S3 server's requests (s3s' debug log) from a mark on."""

    LINE = re.compile(r"req: Request \{ method: (GET|PUT|POST|DELETE|HEAD), uri: (\S+),")

    def __init__(self, log_path):
        self.path = log_path
        self.offset = 0

    def mark(self):
        self.offset = self.path.stat().st_size if self.path else 0

    def since(self):
        if not self.path:
            return {}
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            text = f.read().decode("utf-8", "replace")
        counts = {}
        for method, target in self.LINE.findall(text):
            kind = method
            if method == "POST" and "delete" in target.split("?", 1)[-1]:
                kind = "DeleteObjects"
            elif method == "GET" and "list-type=2" in target:
                kind = "ListObjectsV2"
            counts[kind] = counts.get(kind, 0) + 1
        return counts


def start_up(binary, data_dir, env):
    stdout = open(pathlib.Path(data_dir).parent / "up.out", "w+")
    process = subprocess.Popen(
        [binary, "up", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)],
        stdout=stdout, stderr=open(pathlib.Path(data_dir).parent / "up.log", "w"), env=env)
    for _ in range(600):
        stdout.seek(0)
        found = re.search(r"listening on (http://[^ ,\n]+)", stdout.read())
        if found:
            return process, found.group(1)
        if process.poll() is not None:
            log_text = (pathlib.Path(data_dir).parent / "up.log").read_text()
            raise RuntimeError("locality up exited:\n" + log_text[-3000:])
        time.sleep(0.1)
    raise RuntimeError("locality up never listened")


def measured(label, pid, requests, work, count):
    reset_peak(pid)
    before = vm_hwm_kib(pid)
    requests.mark()
    started = time.monotonic()
    result = work()
    seconds = time.monotonic() - started
    peak = vm_hwm_kib(pid)
    counts = requests.since()
    figure = {
        "operation": label, "objects": count, "seconds": round(seconds, 1),
        "objects_per_s": round(count / seconds), "rss_before_mib": round(before / 1024, 1),
        "peak_rss_mib": round(peak / 1024, 1), "requests": counts,
    }
    if counts:
        deletes = counts.get("DeleteObjects", 0) + counts.get("DELETE", 0)
        figure["delete_requests_per_object"] = round(deletes / count, 5)
    log(f"[{label}] {json.dumps(figure)}")
    return figure, result


def run_up(args, store, count, work_dir, s3, broker_env):
    data_dir = work_dir / "data"
    data_dir.mkdir()
    env = dict(os.environ, RUST_LOG="warn")
    requests = Requests(None)
    if store == "s3":
        endpoint, log_path, root = s3
        bucket = f"bench-{count}-{int(time.time())}"
        seed(root / bucket, count, "original", "s3")
        env.update({
            "LOCALITY__REGIONS__EU__STORE": f"s3://{bucket}",
            "LOCALITY__REGIONS__EU__STORE_OPTIONS__ENDPOINT": endpoint,
            "LOCALITY__REGIONS__EU__STORE_OPTIONS__REGION": "us-east-1",
            "LOCALITY__REGIONS__EU__STORE_OPTIONS__ACCESS_KEY_ID": "bench",
            "LOCALITY__REGIONS__EU__STORE_OPTIONS__SECRET_ACCESS_KEY": "bench-secret",
            "LOCALITY__REGIONS__EU__STORE_OPTIONS__ALLOW_HTTP": "true",
        })
        requests = Requests(log_path)
    else:
        seed(data_dir / "eu", count, "original", "disk")
    figures = []
    process, base = start_up(args.bin, data_dir, env)
    try:
        if "export" in args.operations:
            figure, _ = measured(f"export {store}", process.pid, requests, lambda: wait_done(
                base, "/v1/exports/" + api(base, "POST", f"/v1/subjects/{SUBJECT}/exports",
                                           {"archive": True})["export_id"],
                f"export {store} {count}", count), count)
            figures.append(dict(figure, store=store))
        if "erase" in args.operations:
            figure, view = measured(f"erase {store}", process.pid, requests, lambda: wait_done(
                base,
                "/v1/erasures/" + api(base, "DELETE", f"/v1/subjects/{SUBJECT}")["erasure_id"],
                f"erase {store} {count}", count), count)
            figure["objects_deleted"] = view.get("objects_deleted")
            figures.append(dict(figure, store=store))
    finally:
        process.terminate()
        process.wait(timeout=60)
    if "sweep" in args.operations:
        for kept in [int(n) for n in args.sweep_kept.split(",")]:
            figures.append(run_sweep(args, store, count, work_dir, env, s3, broker_env, kept))
    return figures


def run_sweep(args, store, count, work_dir, env, s3, broker_env, kept):
    """Seeds again and sweeps 29 days ahead with `locality sweep` (its own process):
    `count` outputs written two days ago expire, `kept` written now do not."""
    data_dir = work_dir / "data"
    requests = Requests(None)
    if store == "s3":
        endpoint, log_path, root = s3
        bucket = f"bench-sweep-{count}-{kept}-{int(time.time())}"
        seed(root / bucket, count, "output", "s3")
        seed(root / bucket, kept, "output", "s3 kept", days_ago=0, asset="k")
        env = dict(env, LOCALITY__REGIONS__EU__STORE=f"s3://{bucket}")
        requests = Requests(log_path)
    else:
        shutil.rmtree(data_dir / "eu", ignore_errors=True)
        seed(data_dir / "eu", count, "output", "disk")
        seed(data_dir / "eu", kept, "output", "disk kept", days_ago=0, asset="k")
        env = dict(env, LOCALITY__REGIONS__EU__STORE=f"file://{data_dir / 'eu'}")
    env.update(broker_env)
    as_of = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=29)
             ).strftime("%Y-%m-%dT%H:%M:%SZ")
    requests.mark()
    started = time.monotonic()
    report_path = work_dir / "sweep.json"
    with open(report_path, "w") as out:
        # Its progress goes to stderr, shown as it runs; the report to a file.
        process = subprocess.Popen(
            [args.bin, "--config", str(ROOT / "config/locality.example.toml"), "sweep",
             "--region", "eu", "--as-of", as_of, "--json"],
            stdout=out, env=env)
        # The peak memory of the sweep alone: VmHWM, polled until it exits. (wait4's
        # ru_maxrss would count the forked copy of this Python process before exec.)
        peak_kib = 0
        while process.poll() is None:
            try:
                peak_kib = max(peak_kib, vm_hwm_kib(process.pid))
            except (OSError, ValueError, RuntimeError):
                pass
            time.sleep(0.05)
        status = process.returncode
    seconds = time.monotonic() - started
    text = report_path.read_text().strip()
    report = json.loads(text.splitlines()[-1]) if text else {}
    counts = requests.since()
    figure = {
        "operation": f"sweep {store}", "store": store, "objects": count, "kept": kept,
        "index_entries": report.get("index_entries"), "seconds": round(seconds, 1), "objects_per_s": round(count / seconds),
        "exit": status, "deleted": report.get("deleted"),
        "examined": report.get("examined"), "requests": counts,
        "peak_rss_mib": round(peak_kib / 1024, 1),
    }
    if counts:
        deletes = counts.get("DeleteObjects", 0) + counts.get("DELETE", 0)
        figure["delete_requests_per_object"] = round(deletes / count, 5)
    log(f"[sweep {store}] {json.dumps(figure)}")
    return figure


def start_s3s(state):
    """s3s-fs with the ordered listing (benches/rights-scale.sh builds it) on a free
    loopback port, with request logging."""
    import socket

    binary = os.environ["LOCALITY_BENCH_S3S_FS"]
    root = state / "s3s"
    root.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log_path = state / "s3s.log"
    process = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", str(port), "--access-key", "bench",
         "--secret-key", "bench-secret", str(root)],
        stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
        env=dict(os.environ, RUST_LOG="s3s::service=debug"))
    (state / "services").mkdir(exist_ok=True)
    (state / "services" / "s3s.pid").write_text(str(process.pid))
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
        except urllib.error.HTTPError:
            break
        except OSError:
            time.sleep(0.1)
    return endpoint, log_path, root


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--objects", default="20000,200000")
    parser.add_argument("--stores", default="disk,s3")
    parser.add_argument("--bin", default=str(ROOT / "target/release/locality"))
    parser.add_argument("--operations", default="export,erase,sweep")
    # The sweep's requests follow what expires: the same expiring set beside stores
    # keeping these many more.
    parser.add_argument("--sweep-kept", default="0,200000")
    args = parser.parse_args()
    state = pathlib.Path(tempfile.mkdtemp(prefix="locality-rights-bench."))
    figures = []
    try:
        s3 = None
        if "s3" in args.stores.split(","):
            s3 = start_s3s(state)
        broker_env = None
        if "sweep" in args.operations:
            exports = subprocess.run([str(ROOT / "scripts/rabbitmq-up.sh"), str(state / "services")],
                                     check=True, capture_output=True, text=True).stdout
            port = re.search(r"LOCALITY_TEST_AMQP_PORT=(\d+)", exports).group(1)
            broker_env = {
                "LOCALITY__REGIONS__EU__AMQP_URL": f"amqp://locality-eu:secret-eu@127.0.0.1:{port}/eu",
            }
        for store in args.stores.split(","):
            for count in [int(n) for n in args.objects.split(",")]:
                work_dir = state / f"{store}-{count}"
                work_dir.mkdir()
                figures.extend(run_up(args, store, count, work_dir, s3, broker_env))
                shutil.rmtree(work_dir, ignore_errors=True)
    finally:
        subprocess.run([str(ROOT / "scripts/services-down.sh"), str(state / "services")],
                       capture_output=True)
        shutil.rmtree(state, ignore_errors=True)
    print(json.dumps({"figures": figures}))


if __name__ == "__main__":
    main()
