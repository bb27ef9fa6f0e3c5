import json

import pytest

from clinasr.store import ObjectStore, StoreError, parse_s3_uri


def _dataset(tmp_path):
    d = tmp_path / "ds"
    (d / "audio").mkdir(parents=True)
    (d / "audio" / "a.wav").write_bytes(b"RIFF" + b"\0" * 100)
    (d / "train_manifest.jsonl").write_text('{"audio_filepath": "audio/a.wav", "duration": 1.0, "text": "x"}\n')
    return d


def test_snapshot_is_content_addressed_encrypted_and_idempotent(s3_env, tmp_path):
    store = ObjectStore(s3_env)
    d = _dataset(tmp_path)
    snap = store.stage_snapshot(d)
    assert snap.uri == f"s3://{s3_env.bucket}/datasets/{snap.snapshot_id}"
    assert snap.digest.startswith(snap.snapshot_id)
    bucket, key = parse_s3_uri(f"{snap.uri}/audio/a.wav")
    head = store.client.head_object(Bucket=bucket, Key=key)
    assert head["ServerSideEncryption"] == "AES256"
    assert head["Metadata"]["sha256"] == [f["sha256"] for f in snap.files if f["path"] == "audio/a.wav"][0]
    versions = lambda: len(store.client.list_object_versions(Bucket=bucket)["Versions"])  # noqa: E731
    n = versions()
    again = store.stage_snapshot(d)  # a retry uploads nothing
    assert again.uri == snap.uri and versions() == n
    marker = json.loads(store.get_bytes(f"{snap.uri}/_snapshot.json"))
    assert marker["digest"] == snap.digest and len(marker["files"]) == 2
    # a change in content is a new snapshot
    (d / "train_manifest.jsonl").write_text("changed\n")
    assert store.stage_snapshot(d).snapshot_id != snap.snapshot_id


def test_fetch_snapshot_checks_hashes(s3_env, tmp_path):
    import json

    from clinasr.store import SNAPSHOT_MARKER

    store = ObjectStore(s3_env)
    snap = store.stage_snapshot(_dataset(tmp_path))
    out = store.fetch_snapshot(snap.uri, tmp_path / "copy")
    assert (out / "audio" / "a.wav").read_bytes().startswith(b"RIFF")
    # a corrupted object: the fetch fails naming it
    store.put_bytes(b"RIFF not the recorded audio", f"{snap.uri}/audio/a.wav")
    with pytest.raises(StoreError, match=f"audio/a.wav in {snap.uri} does not match its recorded sha256"):
        store.fetch_snapshot(snap.uri, tmp_path / "copy2")
    # an edited entry of the file listing (here: to match the corrupted object) breaks the snapshot id
    marker = json.loads(store.get_bytes(f"{snap.uri}/{SNAPSHOT_MARKER}"))
    marker["files"][[f["path"] for f in marker["files"]].index("audio/a.wav")]["sha256"] = "0" * 64
    store.put_bytes(json.dumps(marker).encode(), f"{snap.uri}/{SNAPSHOT_MARKER}")
    with pytest.raises(StoreError, match="does not hash to the snapshot id"):
        store.fetch_snapshot(snap.uri, tmp_path / "copy3")


def test_a_snapshot_of_many_files_goes_up_and_comes_back_in_parallel_whole_or_in_part(s3_env, tmp_path, monkeypatch):
    """Files go up and come back on several threads (CLINASR_S3_CONCURRENCY); a fetch may ask for some files only
    (every one still checked against the listing), and a path the snapshot lacks is an error naming it."""
    d = tmp_path / "many"
    for i in range(40):
        (d / "audio").mkdir(parents=True, exist_ok=True)
        (d / "audio" / f"{i:02d}.wav").write_bytes(b"RIFF" + bytes([i]) * (100 + i))
    (d / "train_manifest.jsonl").write_text("".join(f'{{"audio_filepath": "audio/{i:02d}.wav"}}\n' for i in range(40)))
    monkeypatch.setenv("CLINASR_S3_CONCURRENCY", "6")
    store = ObjectStore(s3_env)
    snap = store.stage_snapshot(d)
    assert len(store.list_keys(snap.uri + "/")) == 42                     # 40 clips, the manifest, the marker
    whole = store.fetch_snapshot(snap.uri, tmp_path / "whole")
    assert all((whole / "audio" / f"{i:02d}.wav").read_bytes() == (d / "audio" / f"{i:02d}.wav").read_bytes()
               for i in range(40))
    part = store.fetch_snapshot(snap.uri, tmp_path / "part", ["train_manifest.jsonl", "audio/07.wav", "audio/07.wav"])
    assert sorted(p.relative_to(part).as_posix() for p in part.rglob("*") if p.is_file()) == \
        ["audio/07.wav", "train_manifest.jsonl"]
    with pytest.raises(StoreError, match="has no 'audio/99.wav' \\(and 1 more\\)"):
        store.fetch_snapshot(snap.uri, tmp_path / "part", ["audio/99.wav", "audio/98.wav"])
    store.put_bytes(b"RIFF not the recorded audio", f"{snap.uri}/audio/03.wav")   # a corrupted object among many
    with pytest.raises(StoreError, match="audio/03.wav in .* does not match its recorded sha256"):
        store.fetch_snapshot(snap.uri, tmp_path / "again")
    assert store.fetch_snapshot(snap.uri, tmp_path / "part2", ["audio/04.wav"]).joinpath("audio/04.wav").exists()


def test_an_interrupted_snapshot_is_never_used(s3_env, tmp_path):
    from clinasr.store import SNAPSHOT_MARKER

    store = ObjectStore(s3_env)
    ds = _dataset(tmp_path)
    snap = store.stage_snapshot(ds)
    bucket, key = snap.uri.removeprefix("s3://").split("/", 1)
    store.client.delete_object(Bucket=bucket, Key=f"{key}/{SNAPSHOT_MARKER}")     # as if the upload died before it
    with pytest.raises(FileNotFoundError, match="incomplete or missing: no _snapshot.json"):
        store.fetch_snapshot(snap.uri, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()
    again = store.stage_snapshot(ds)        # a retry completes it (same content, same id)
    assert again.uri == snap.uri and store.fetch_snapshot(snap.uri, tmp_path / "copy").exists()


def test_empty_dataset_and_unreachable_store_are_clear_errors(clinasr_home, tmp_path, monkeypatch):
    from tests.conftest import free_port
    from clinasr.settings import Settings

    monkeypatch.setenv("CLINASR_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    store = ObjectStore(Settings.from_env())
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="empty"):
        store.stage_snapshot(tmp_path / "empty")
    with pytest.raises(StoreError, match="not reachable"):
        store.stage_snapshot(_dataset(tmp_path))


def test_missing_credentials_for_real_s3_is_a_clear_error(clinasr_home, tmp_path, monkeypatch):
    from clinasr.settings import Settings

    monkeypatch.setenv("CLINASR_S3_ENDPOINT", "")
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StoreError, match="no AWS credentials"):
        ObjectStore(Settings.from_env()).stage_snapshot(_dataset(tmp_path))


# -- the embedded store keeps what it was given: restarts and crashes -----------------------------------
@pytest.fixture
def own_store(tmp_path, clinasr_home, monkeypatch):
    """A private SeaweedFS (the platform's object store) with its data in tmp_path, so a test can stop, kill
    and restart it; yields (settings, start) where start() brings it up again on the same port and data."""
    from contextlib import ExitStack

    from clinasr.settings import Settings
    from tests.conftest import free_port, seaweedfs

    port = free_port()
    monkeypatch.setenv("CLINASR_S3_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("CLINASR_BUCKET", "restart")
    stack = ExitStack()

    def start():
        return stack.enter_context(seaweedfs(tmp_path / "s3data", port))

    start()
    yield Settings.from_env(), start, stack
    stack.close()


def _wav_dataset(root, n=40, size=512 * 1024, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True)
    for i in range(n):
        (root / "audio" / f"{i:03d}.wav").write_bytes(b"RIFF" + rng.bytes(size))
    (root / "train_manifest.jsonl").write_text("".join(f'{{"audio_filepath": "audio/{i:03d}.wav"}}\n' for i in range(n)))
    return root


def test_a_snapshot_and_the_provenance_mirror_survive_a_restart_of_the_store(own_store, tmp_path):
    from clinasr import provenance as V
    from clinasr.platform import prepare_buckets

    settings, start, stack = own_store
    prepare_buckets(settings)
    ds = _wav_dataset(tmp_path / "ds", n=5)
    snap = ObjectStore(settings).stage_snapshot(ds)
    plog = V.ProvenanceLog(settings)
    for i in range(3):
        plog.append(plog.new_record(dag_id="d", run_id="r", task_id=f"t{i}", try_number=1, state="success"))
    assert not (plog.dir / "mirror-errors.log").exists() and V.verify_mirror(plog) == []
    stack.close()                                   # platform down
    start()                                         # platform up: same data directory
    out = ObjectStore(settings).fetch_snapshot(snap.uri, tmp_path / "copy")   # checks every sha256
    assert sorted(p.name for p in (out / "audio").iterdir()) == [f"{i:03d}.wav" for i in range(5)]
    assert V.verify_mirror(plog) == []              # every locked copy is still there and matches


def test_a_store_killed_mid_upload_leaves_no_usable_snapshot_and_the_retry_finishes(own_store, tmp_path):
    import os
    import signal
    import threading

    from clinasr.store import SNAPSHOT_MARKER

    settings, start, stack = own_store
    ds = _wav_dataset(tmp_path / "ds", n=60)
    store = ObjectStore(settings)
    store.ensure_bucket()
    failed = []
    uploads = []
    real_put = store.put_file

    def counting_put(*a, **kw):
        uploads.append(a[1])
        return real_put(*a, **kw)

    store.put_file = counting_put
    t = threading.Thread(target=lambda: _catch(failed, store.stage_snapshot, ds))
    t.start()
    while len(uploads) < 10 and t.is_alive():
        threading.Event().wait(0.02)
    pid = int(os.popen(f"pgrep -f 'weed mini -dir={tmp_path / 's3data'}'").read().split()[0])
    os.kill(pid, signal.SIGKILL)                     # kill -9 of the store during the upload
    t.join(120)
    assert failed and "not reachable" in str(failed[0]), failed
    stack.close()
    start()
    uri = uploads[0].rsplit("/audio/", 1)[0]
    with pytest.raises(FileNotFoundError, match="incomplete or missing"):      # the partial upload is never used
        ObjectStore(settings).fetch_snapshot(uri, tmp_path / "partial")
    assert not ObjectStore(settings).exists(f"{uri}/{SNAPSHOT_MARKER}")
    snap = ObjectStore(settings).stage_snapshot(ds)                             # the task's retry
    assert snap.uri == uri
    out = ObjectStore(settings).fetch_snapshot(uri, tmp_path / "copy")
    assert len(list((out / "audio").iterdir())) == 60


def _catch(sink, fn, *a):
    try:
        fn(*a)
    except Exception as e:  # noqa: BLE001 - the test inspects it
        sink.append(e)


def test_a_missing_object_is_named_with_what_to_do(s3_env):
    store = ObjectStore(s3_env)
    store.ensure_bucket()
    uri = f"s3://{s3_env.bucket}/reports/gate/m/v9/run/gate.json"
    with pytest.raises(FileNotFoundError, match=f"{uri} does not exist in the object store .* re-run the task"):
        store.get_bytes(uri)


def test_platform_buckets_get_versioning_encryption_and_object_lock(s3_env):
    from clinasr.platform import prepare_buckets

    msg = prepare_buckets(s3_env)
    prepare_buckets(s3_env)                                            # idempotent
    store = ObjectStore(s3_env)
    enc = store.client.get_bucket_encryption(Bucket=s3_env.bucket)["ServerSideEncryptionConfiguration"]
    assert enc["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert store.client.get_bucket_versioning(Bucket=s3_env.bucket)["Status"] == "Enabled"
    assert store.lock_enabled(s3_env.provenance_bucket) and "Object Lock" in msg
