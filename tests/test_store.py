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
