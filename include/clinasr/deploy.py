"""Deploy a registry model version to the running transcription service (used by the promotion DAG and
by ``clinasr registry rollback``)."""

from __future__ import annotations

import os

from clinasr.settings import Settings


def deploy(model_uri: str, settings: Settings | None = None, log=print, timeout_s: float = 900) -> dict:
    """Ask the service to load ``model_uri``: it warms the new model up beside the old one and switches
    atomically; a failed load keeps the old model serving and raises here."""
    import requests

    settings = settings or Settings.from_env()
    url = settings.serve_url.rstrip("/")
    key = os.environ.get("CLINASR_SERVE_ADMIN_KEY") or settings.serve_api_key()   # /admin/* takes the admin key
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        r = requests.post(f"{url}/admin/reload", json={"model": model_uri}, headers=headers, timeout=timeout_s)
    except requests.ConnectionError:
        raise RuntimeError(f"the transcription service at {url} is not reachable; {model_uri} is set in the "
                           "registry and a service started later loads it (`clinasr platform up`, or set "
                           "CLINASR_SERVE_URL)") from None
    if r.status_code >= 400:
        raise RuntimeError(f"serving at {url} refused {model_uri} ({r.status_code}): {r.text[:500]}")
    res = r.json()
    ready = requests.get(f"{url}/health/ready", timeout=30).json()
    if ready.get("model_version") != res["version"]:
        raise RuntimeError(f"serving reports {ready} after deploying {res['version']}")
    log(f"serving {url} now answers with {res['version']} (previous {res['previous']}, {res['device']})")
    return {**res, "url": url}
