"""clinasr: a clinical speech-recognition flywheel on Airflow.

Modules are one per stage or boundary; none of them imports torch/NeMo at import time, so the
orchestration runtime (Airflow) can import the package. The ML runtime is reached through
:mod:`clinasr.mlenv`.
"""

__version__ = "0.1.0"
