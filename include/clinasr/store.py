"""Object store access: the one module that talks S3.

Embedded default: SeaweedFS's S3 server on 127.0.0.1, objects on disk under ``$CLINASR_HOME/s3`` (it survives
restarts; bench/s3_servers.py measured it against the alternatives); production: Amazon S3 with SSE-KMS (or
the same SeaweedFS server in docker-compose). Same boto3 code path everywhere.

Datasets are staged as immutable, content-addressed snapshots::

    s3://<bucket>/datasets/<snapshot id>/<relative path>     every file of the dataset
    s3://<bucket>/datasets/<snapshot id>/_snapshot.json      file list with sha256 + size (written last)

The snapshot id is the sha256 of the file list, so the same content always lands at the same URI
and re-running a staging task uploads nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from clinasr.settings import Settings

SNAPSHOT_MARKER = "_snapshot.json"


class StoreError(RuntimeError):
    """The object store could not be used; the message says what to change."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def parse_s3_uri(uri: str) -> tuple[str, str]:
    p = urlparse(uri)
    if p.scheme != "s3" or not p.netloc:
        raise StoreError(f"not an s3:// URI: {uri!r}")
    return p.netloc, p.path.lstrip("/")


@dataclass(frozen=True)
class Snapshot:
    uri: str
    snapshot_id: str   # first 20 hex digits of ``digest``
    digest: str        # sha256 of the file listing
    files: list[dict]  # [{"path", "sha256", "size"}]

    @property
    def total_bytes(self) -> int:
        return sum(f["size"] for f in self.files)


class ObjectStore:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            kwargs = {}
            if self.settings.s3_endpoint:
                kwargs["endpoint_url"] = self.settings.s3_endpoint
                # The embedded server's generated key (settings.local_s3_credentials) wins over AWS_* variables
                # meant for somewhere else; a loopback server of a test or bench (no key file) takes the
                # environment's or a fixed local pair; real endpoints need real credentials.
                if _is_loopback(self.settings.s3_endpoint):
                    if (self.settings.home / "s3" / "credentials.json").exists() or not os.environ.get("AWS_ACCESS_KEY_ID"):
                        key, secret = self.settings.local_s3_credentials()
                        kwargs.update(aws_access_key_id=key, aws_secret_access_key=secret)
            self._client = boto3.client(
                "s3",
                region_name=self.settings.aws_region,
                config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=60,
                              max_pool_connections=max(10, _concurrency())),
                **kwargs,
            )
        return self._client

    # -- low level ---------------------------------------------------------------------------------
    def _call(self, fn, *args, **kwargs):
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        try:
            return fn(*args, **kwargs)
        except NoCredentialsError:
            raise StoreError(
                "no AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or an instance role), "
                "or point CLINASR_S3_ENDPOINT at the embedded server (`clinasr platform up`)"
            ) from None
        except EndpointConnectionError:
            raise StoreError(
                f"object store at {self.settings.s3_endpoint} is not reachable: start it with "
                "`clinasr platform up` or fix CLINASR_S3_ENDPOINT"
            ) from None
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(str(e)) from None
            raise StoreError(f"object store refused {fn.__name__}: {code} {e}") from None

    def _sse_args(self) -> dict:
        args = {"ServerSideEncryption": self.settings.sse}
        if self.settings.sse.startswith("aws:kms") and self.settings.kms_key_id:
            args["SSEKMSKeyId"] = self.settings.kms_key_id
        return args

    def ensure_bucket(self, bucket: str | None = None) -> str:
        bucket = bucket or self.settings.bucket
        if self.head_bucket(bucket) is None:
            self._call(self.client.create_bucket, Bucket=bucket, **self._location())
            self._call(self.client.put_bucket_versioning, Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        return bucket

    def ensure_default_encryption(self, bucket: str | None = None) -> None:
        """Bucket default encryption, so an object written without SSE headers is encrypted too."""
        rule = {"SSEAlgorithm": self.settings.sse}
        if self.settings.sse.startswith("aws:kms") and self.settings.kms_key_id:
            rule["KMSMasterKeyID"] = self.settings.kms_key_id
        self._call(self.client.put_bucket_encryption, Bucket=bucket or self.settings.bucket,
                   ServerSideEncryptionConfiguration={"Rules": [{"ApplyServerSideEncryptionByDefault": rule}]})

    def ensure_lock_bucket(self) -> str:
        """The provenance mirror's bucket, created with S3 Object Lock (versioned; locked versions cannot be
        overwritten or deleted before their retention ends). An existing bucket without Object Lock is an
        error: Object Lock can only be set when a bucket is made on most servers."""
        bucket = self.settings.provenance_bucket
        if self.head_bucket(bucket) is None:
            self._call(self.client.create_bucket, Bucket=bucket, ObjectLockEnabledForBucket=self.settings.provenance_lock_mode is not None,
                       **self._location())
            self._call(self.client.put_bucket_versioning, Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        if self.settings.provenance_lock_mode and not self.lock_enabled(bucket):
            raise StoreError(f"bucket {bucket} has no Object Lock, so the provenance mirror could be rewritten: create "
                             f"it with Object Lock, name another with CLINASR_PROVENANCE_BUCKET, or set "
                             f"CLINASR_PROVENANCE_LOCK=off")
        return bucket

    def lock_enabled(self, bucket: str) -> bool:
        try:
            cfg = self._call(self.client.get_object_lock_configuration, Bucket=bucket)
        except (FileNotFoundError, StoreError):
            return False
        return cfg.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"

    def put_locked(self, data: bytes, uri: str) -> dict:
        """Write once under Object Lock retention (``CLINASR_PROVENANCE_LOCK``, e.g. ``GOVERNANCE:365``)."""
        from datetime import datetime, timedelta, timezone

        bucket, key = parse_s3_uri(uri)
        extra = {}
        if self.settings.provenance_lock_mode:
            extra = {"ObjectLockMode": self.settings.provenance_lock_mode,
                     "ObjectLockRetainUntilDate": datetime.now(timezone.utc) + timedelta(days=self.settings.provenance_lock_days)}
        sha256 = hashlib.sha256(data).hexdigest()
        self._call(self.client.put_object, Bucket=bucket, Key=key, Body=data, Metadata={"sha256": sha256},
                   **self._sse_args(), **extra)
        return {"uri": uri, "sha256": sha256}

    def versions(self, uri_prefix: str) -> dict[str, dict]:
        """Per key under the prefix: how many versions it has and whether its latest is a delete marker."""
        bucket, prefix = parse_s3_uri(uri_prefix)
        out: dict[str, dict] = {}
        kwargs = {"Bucket": bucket, "Prefix": prefix}
        while True:
            page = self._call(self.client.list_object_versions, **kwargs)
            for v in page.get("Versions", []):
                out.setdefault(v["Key"], {"versions": 0, "deleted": False})["versions"] += 1
            for m in page.get("DeleteMarkers", []):
                d = out.setdefault(m["Key"], {"versions": 0, "deleted": False})
                d["deleted"] = d["deleted"] or m.get("IsLatest", False)
            if not page.get("IsTruncated"):
                return out
            kwargs.update(KeyMarker=page.get("NextKeyMarker"), VersionIdMarker=page.get("NextVersionIdMarker"))

    def _location(self) -> dict:
        if self.settings.aws_region != "us-east-1":
            return {"CreateBucketConfiguration": {"LocationConstraint": self.settings.aws_region}}
        return {}

    def head_bucket(self, bucket: str) -> dict | None:
        try:
            return self._call(self.client.head_bucket, Bucket=bucket)
        except (FileNotFoundError, StoreError):
            return None

    def head(self, bucket: str, key: str) -> dict | None:
        try:
            return self._call(self.client.head_object, Bucket=bucket, Key=key)
        except FileNotFoundError:
            return None

    def exists(self, uri: str) -> bool:
        return self.head(*parse_s3_uri(uri)) is not None

    def put_file(self, path: Path, uri: str, sha256: str | None = None, absent: bool = False) -> dict:
        """Upload with server-side encryption; skip when an object with the same sha256 is there (``absent``: the
        caller listed the prefix and knows it is not, so no HEAD request is made)."""
        bucket, key = parse_s3_uri(uri)
        sha256 = sha256 or sha256_file(path)
        head = None if absent else self.head(bucket, key)
        if head and head.get("Metadata", {}).get("sha256") == sha256:
            return {"uri": uri, "sha256": sha256, "uploaded": False}
        with open(path, "rb") as f:
            self._call(
                self.client.put_object, Bucket=bucket, Key=key, Body=f, Metadata={"sha256": sha256}, **self._sse_args()
            )
        return {"uri": uri, "sha256": sha256, "uploaded": True}

    def put_bytes(self, data: bytes, uri: str) -> dict:
        bucket, key = parse_s3_uri(uri)
        sha256 = hashlib.sha256(data).hexdigest()
        self._call(self.client.put_object, Bucket=bucket, Key=key, Body=data, Metadata={"sha256": sha256}, **self._sse_args())
        return {"uri": uri, "sha256": sha256}

    def get_bytes(self, uri: str) -> bytes:
        bucket, key = parse_s3_uri(uri)
        try:
            return self._call(self.client.get_object, Bucket=bucket, Key=key)["Body"].read()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{uri} does not exist in the object store at {self.settings.s3_endpoint or 'Amazon S3'}: it was "
                "deleted, or the store was replaced (the embedded one keeps its objects under $CLINASR_HOME/s3); "
                "re-run the task that produced it (the data DAG for a snapshot, the training DAG for a model, the "
                "evaluate DAG for a report)") from None

    def download(self, uri: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(self.get_bytes(uri))
        return dest

    def list_keys(self, uri_prefix: str) -> list[str]:
        bucket, prefix = parse_s3_uri(uri_prefix)
        keys, token = [], None
        while True:
            kwargs = {"Bucket": bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(self.client.list_objects_v2, **kwargs)
            keys += [o["Key"] for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return keys
            token = page["NextContinuationToken"]

    # -- snapshots ---------------------------------------------------------------------------------
    def stage_snapshot(self, local_dir: Path, prefix: str = "datasets") -> Snapshot:
        """Upload every file under ``local_dir`` as an immutable content-addressed snapshot."""
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise StoreError(f"nothing to stage: {local_dir} is not a directory")
        files = []
        for p in sorted(x for x in local_dir.rglob("*") if x.is_file()):
            rel = p.relative_to(local_dir).as_posix()
            if rel == SNAPSHOT_MARKER:
                continue
            files.append({"path": rel, "sha256": sha256_file(p), "size": p.stat().st_size})
        if not files:
            raise StoreError(f"nothing to stage: {local_dir} is empty")
        listing = json.dumps(files, sort_keys=True, separators=(",", ":")).encode()
        digest = hashlib.sha256(listing).hexdigest()
        snapshot_id = digest[:20]
        bucket = self.ensure_bucket()
        base = f"s3://{bucket}/{prefix}/{snapshot_id}"
        snap = Snapshot(uri=base, snapshot_id=snapshot_id, digest=digest, files=files)
        if self.exists(f"{base}/{SNAPSHOT_MARKER}"):
            return snap  # immutable and complete: a retry uploads nothing
        there = set(self.list_keys(base + "/"))   # one LIST per 1,000 keys instead of a HEAD per file (a retry
        _, prefix = parse_s3_uri(base)            # of an interrupted upload still checks what it finds)
        self._each(lambda f: self.put_file(local_dir / f["path"], f"{base}/{f['path']}", sha256=f["sha256"],
                                           absent=f"{prefix}/{f['path']}" not in there), files)
        marker = {"snapshot_id": snapshot_id, "digest": digest, "files": files, "total_bytes": snap.total_bytes}
        self.put_bytes(json.dumps(marker, indent=1).encode(), f"{base}/{SNAPSHOT_MARKER}")
        return snap

    def _each(self, fn, items: list) -> None:
        """``fn`` over ``items`` on CLINASR_S3_CONCURRENCY threads (default 8; one request per file, so a snapshot
        of 10,000 clips is bound by round trips, not bytes); the first error is raised once all have stopped."""
        workers = _concurrency()
        if workers == 1 or len(items) < 2:
            for x in items:
                fn(x)
            return
        from concurrent.futures import ThreadPoolExecutor

        self.client   # made once, before the threads share it (boto3 clients are thread-safe)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(fn, items):
                pass

    def fetch_snapshot(self, uri: str, dest: Path, paths: list[str] | None = None) -> Path:
        """Download a snapshot into ``dest`` and check it: the completion marker must exist (an interrupted
        upload has none and is never used), its file listing must hash to the snapshot's id (an edited entry
        is caught), and every file must match its recorded sha256. ``paths``: only these files of it (a
        fine-tune's replay rows of a large replay set); a path the snapshot does not have is an error."""
        uri = uri.rstrip("/")
        return self.fetch_files(uri, dest, self.snapshot_files(uri), paths)

    def fetch_files(self, uri: str, dest: Path, files: list[dict], paths: list[str] | None = None) -> Path:
        """Download entries of a snapshot's checked listing (:meth:`snapshot_files`: a caller that fetches from one
        snapshot several times reads its marker once), each checked against its sha256; ``paths``: only these."""
        if paths is not None:
            listed = {f["path"]: f for f in files}
            missing = [x for x in paths if x not in listed]
            if missing:
                raise StoreError(f"snapshot {uri} has no {missing[0]!r}" + (f" (and {len(missing) - 1} more)"
                                                                           if len(missing) > 1 else ""))
            files = [listed[x] for x in dict.fromkeys(paths)]

        def fetch(f: dict) -> None:
            target = dest / f["path"]
            if target.exists() and sha256_file(target) == f["sha256"]:
                return  # already fetched and intact
            self.download(f"{uri}/{f['path']}", target)
            if sha256_file(target) != f["sha256"]:
                raise StoreError(f"{f['path']} in {uri} does not match its recorded sha256")

        self._each(fetch, files)
        return dest

    def snapshot_files(self, uri: str) -> list[dict]:
        """A snapshot's file listing ({path, sha256, size}), checked: the completion marker must exist and its
        listing must hash to the snapshot's id."""
        uri = uri.rstrip("/")
        try:
            marker = json.loads(self.get_bytes(f"{uri}/{SNAPSHOT_MARKER}"))
        except FileNotFoundError:
            raise FileNotFoundError(f"snapshot {uri} is incomplete or missing: no {SNAPSHOT_MARKER} (an interrupted "
                                    "upload is never used); stage it again") from None
        listing = json.dumps(marker.get("files"), sort_keys=True, separators=(",", ":")).encode()
        digest = hashlib.sha256(listing).hexdigest()
        if digest != marker.get("digest") or not digest.startswith(uri.rsplit("/", 1)[-1]):
            raise StoreError(f"snapshot {uri}: its file listing ({SNAPSHOT_MARKER}) does not hash to the snapshot id "
                             f"(an entry was changed after staging); do not use it")
        return marker["files"]


def _concurrency() -> int:
    """S3 requests in flight when a snapshot is staged or fetched (CLINASR_S3_CONCURRENCY, default 8)."""
    return max(1, int(os.environ.get("CLINASR_S3_CONCURRENCY", "8")))


def _is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")
