"""Shared fixtures. Each test file runs in exactly one runtime: files that declare
``pytestmark = pytest.mark.ml`` run under the ML runtime (.venv/ml), all others under the
orchestration runtime (.venv/orch); scripts/test.sh runs both."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

ML_RUNTIME = importlib.util.find_spec("torch") is not None
REPO = Path(__file__).resolve().parents[1]


def pytest_ignore_collect(collection_path, config):
    p = Path(collection_path)
    if p.suffix != ".py" or not p.name.startswith("test_"):
        return None
    is_ml = "pytestmark = pytest.mark.ml" in p.read_text()
    return is_ml != ML_RUNTIME


from clinasr.platform import free_port  # noqa: E402,F401 - tests import it from here


@pytest.fixture
def clinasr_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("CLINASR_HOME", str(home))
    return home


def char_error_rate(ref: str, hyp: str) -> float:
    """Character edit distance over the reference's length (metrics.align over characters): two transcripts of the
    same clip that differ only in how an unknown word is spelt ("warfore in" / "warfuring") stay near 0.2; a clip
    decoded at the wrong rate or channel layout reads as other words (near 1)."""
    from clinasr.metrics import align

    return sum(op != "ok" for op, _, _ in align(list(ref), list(hyp))) / max(len(ref), 1)


@contextmanager
def _http_service(argv: list[str], health_path: str, port: int, timeout_s: float = 120, env: dict | None = None,
                  log_path: Path | None = None):
    """Start a real server process on loopback, wait for its health URL, stop it afterwards."""
    out = open(log_path, "w") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{Path(argv[0]).name} exited with {proc.returncode}")
            try:
                urllib.request.urlopen(url + health_path, timeout=1)
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"{Path(argv[0]).name} did not become healthy in {timeout_s:.0f}s") from None
                time.sleep(0.3)
        yield url
    finally:
        if proc.poll() is None:   # as `clinasr platform down` stops a service: SIGTERM, then SIGKILL
            os.killpg(proc.pid, 15)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:   # SeaweedFS sometimes takes longer than 20 s to stop on a loaded VM
                os.killpg(proc.pid, 9)
                proc.wait(10)
        if log_path:
            out.close()


def _orch_bin(name: str) -> Path:
    b = Path(sys.executable).parent / name
    return b if b.exists() else REPO / ".venv" / "orch" / "bin" / name   # the ML runtime uses the orch runtime's


@contextmanager
def seaweedfs(data_dir: Path, port: int | None = None, env: dict | None = None):
    """The embedded object store (SeaweedFS's S3 server, objects on disk in ``data_dir``), started the way the
    platform starts it; stopped with SIGTERM at the end (tests that need a crash kill it themselves)."""
    from clinasr.platform import seaweedfs_argv

    port = port or free_port()
    argv = seaweedfs_argv(str(_orch_bin("weed")), data_dir, port, data_dir.parent / f"{data_dir.name}-ports.json")
    with _http_service(argv, "/healthz", port, env=env, log_path=data_dir.parent / f"{data_dir.name}.log") as url:
        yield url


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """The real S3-compatible server the platform uses (SeaweedFS) on loopback, for the S3 code path."""
    with seaweedfs(tmp_path_factory.mktemp("s3") / "data") as url:
        yield url


@pytest.fixture(scope="session")
def aws_server():
    """moto's server on loopback: the stand-in for AWS APIs that cannot exist here (SageMaker, EC2)."""
    port = free_port()
    with _http_service([str(_orch_bin("moto_server")), "-H", "127.0.0.1", "-p", str(port)], "/moto-api/", port) as url:
        yield url


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server + registry (SQLite backend, local artifacts) on loopback."""
    # the server lives in the orchestration runtime (the ML runtime has only mlflow-skinny's client)
    mlflow = REPO / ".venv" / "orch" / "bin" / "mlflow"
    d = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    with _http_service([str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                        "--backend-store-uri", f"sqlite:///{d}/db.sqlite", "--artifacts-destination", str(d / "art")],
                       "/health", port) as url:
        yield url


@pytest.fixture
def s3_env(s3_server, clinasr_home, monkeypatch, request):
    """Settings pointing at the loopback S3 server with a bucket of this test's own."""
    bucket = "t-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    monkeypatch.setenv("CLINASR_S3_ENDPOINT", s3_server)
    monkeypatch.setenv("CLINASR_BUCKET", bucket)
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    from clinasr.settings import Settings

    return Settings.from_env()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """(ML runtime) a small real dataset: grammar transcripts for two drugs, espeak-ng audio, no augmentation."""
    from clinasr.synth.lexicon import load_lexicon, load_terms
    from clinasr.synth.pipeline import build_dataset, load_config
    from clinasr.synth.transcripts import generate_transcripts

    lex = load_lexicon()
    res = generate_transcripts(lex, load_terms(["warfarin", "metoprolol"], lex), 10, seed=5)
    cfg = load_config(overrides={"accent_mix": {"native": 1.0}})
    out = tmp_path_factory.mktemp("tiny-ds") / "dataset"
    build_dataset(out, [u.to_dict() for u in res["utterances"]], config=cfg, seed=5, augment_on=False,
                  accent_profiles=["native"], progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_dataset, tmp_path_factory):
    """(ML runtime) a .nemo fine-tuned for a few CPU steps from the shipped base model (the embedded default,
    models/clinasr-base-en-multi), no tracking."""
    from clinasr.experiment import BASE_MODEL
    from clinasr.training.train import train

    out = tmp_path_factory.mktemp("tiny-model")
    r = train({"dataset": str(tiny_dataset), "output_dir": str(out), "mlflow": {"enabled": False},
               "base": {"nemo": str(BASE_MODEL)}, "model_overrides": "configs/model/finetune_small.yaml",
               "trainer_overrides": {"max_steps": 4, "val_check_interval": 4, "checkpoint_every_n_steps": 4,
                                     "batch_size": 4}}, log=lambda m: None)
    return r["nemo_path"]


@pytest.fixture(scope="session")
def wav(tiny_dataset):
    """(ML runtime) the tiny dataset's first validation clip."""
    import json

    row = json.loads((tiny_dataset / "val_manifest.jsonl").read_text().splitlines()[0])
    return tiny_dataset / row["audio_filepath"]


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium(url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """Debian's Chromium, headless, on a page (``--dump-dom``, ``--screenshot=...``): the page as a person sees it."""
    assert Path(CHROMIUM).exists(), "chromium is not installed: run scripts/setup.sh (it installs Debian's chromium)"
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}", *args, url],
                          capture_output=True, text=True, timeout=120)


os.environ.setdefault("MPLBACKEND", "Agg")
