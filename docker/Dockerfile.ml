# ML image: TTS, NeMo, DeepSpeed, training, evaluation and serving. The same entry point as locally:
#   clinasr ml-stage <stage> --args-json ... --result-json ...     (SageMaker / EC2 / Airflow tasks)
# Build for GPUs with a CUDA torch: --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ARG CLINASR_CODE_VERSION=unknown
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN apt-get update && apt-get install -y --no-install-recommends espeak-ng flite sox ffmpeg libsndfile1 g++ git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/clinasr
COPY requirements-ml.txt constraints/ml.txt ./
RUN pip install --no-cache-dir --extra-index-url ${TORCH_INDEX} -r requirements-ml.txt -c ml.txt \
    && DS_BUILD_OPS=0 pip install --no-cache-dir --no-build-isolation deepspeed==0.19.8
COPY pyproject.toml README.md ./
COPY include ./include
COPY configs ./configs
RUN pip install --no-cache-dir --no-deps -e .
ENV PYTHONPATH=/opt/clinasr/include CLINASR_HOME=/var/lib/clinasr CLINASR_CODE_VERSION=${CLINASR_CODE_VERSION}
ENTRYPOINT ["clinasr"]
