# ML image: TTS, NeMo, DeepSpeed, training, evaluation and serving. The same entry point as locally:
#   clinasr ml-stage <stage> --args-json ... --result-json ...     (SageMaker / EC2 / Airflow tasks)
# Build with BuildKit (docker compose build, or DOCKER_BUILDKIT=1 docker build). Its first steps are, line for
# line, those of docker/Dockerfile.airflow, so both images share the ML runtime's layers (built once).
# BASE_IMAGE: any Debian bookworm image (python:3.11-slim-bookworm where a registry is reachable; a debootstrap
# import without Python also works: python3 comes from apt then).
# TORCH_INDEX: the torch build: the CPU wheels by default; for GPUs --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128.
# Empty: torch from PyPI, or from a wheel put in docker/local/ (scripts/compose-test.sh does, for the CPU wheel).
# A private CA for pip: --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_DEFAULT_TIMEOUT=180
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates git curl espeak-ng flite sox ffmpeg \
        libsndfile1 g++ \
    && (command -v python3 >/dev/null || apt-get install -y --no-install-recommends python3 python3-venv python3-dev) \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/clinasr
COPY requirements-ml.txt constraints/ml.txt ./
RUN --mount=type=bind,source=docker/local,target=/tmp/local --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -m venv /opt/ml && /opt/ml/bin/pip install -q --upgrade pip setuptools wheel \
    && /opt/ml/bin/pip install --find-links /tmp/local ${TORCH_INDEX:+--extra-index-url $TORCH_INDEX} \
        -r requirements-ml.txt -c ml.txt \
    && DS_BUILD_OPS=0 /opt/ml/bin/pip install --no-build-isolation deepspeed==0.19.8
# Debian bookworm's own Python (3.11.2) predates tarfile's extraction filters (3.11.4), which NeMo passes when it
# unpacks a .nemo: there the ML runtime's `tarfile` is backports.tarfile (CPython 3.12's module), set at start-up
RUN --mount=type=secret,id=pip_cert \
    if ! /opt/ml/bin/python -c 'import tarfile; tarfile.data_filter' 2>/dev/null; then \
      if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
      && /opt/ml/bin/pip install backports.tarfile==1.2.0 \
      && echo 'import sys, backports.tarfile; sys.modules["tarfile"] = backports.tarfile' \
         > "$(/opt/ml/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz_clinasr_tarfile.pth" \
      && /opt/ml/bin/python -c 'import tarfile; tarfile.data_filter'; fi
COPY pyproject.toml README.md ./
COPY include ./include
COPY configs ./configs
COPY models ./models
RUN /opt/ml/bin/pip install -q --no-deps --no-build-isolation -e .
ARG CLINASR_CODE_VERSION=unknown
ENV PATH=/opt/ml/bin:$PATH PYTHONPATH=/opt/clinasr/include CLINASR_HOME=/var/lib/clinasr \
    CLINASR_ML_PYTHON=/opt/ml/bin/python CLINASR_CODE_VERSION=${CLINASR_CODE_VERSION}
ENTRYPOINT ["clinasr"]
