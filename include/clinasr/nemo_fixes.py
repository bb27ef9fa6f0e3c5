"""What every NeMo model load here needs first (:func:`apply`): a fix for a NeMo 3.0.0 bug that the ML runtime meets
on GPUs, and NeMo's permission to build clinasr's own modules (:func:`allow_clinasr_modules`).

NeMo compiles the conditional kernels of its CUDA-graph decoders (TDT/RNN-T label looping, CTC greedy, the
beam searches) with ``nemo.core.utils.cuda_python_utils.run_nvrtc``, which allocates NVRTC's output buffers as
``b" " * size``. When the compile log is empty NVRTC reports a size of 1, and ``b" " * 1`` is the constant ``b" "``
itself: ``nvrtcGetProgramLog`` writes the log's NUL terminator into it, and on Python 3.12 (where that constant is
CPython's one shared one-byte object, and on 3.11 too when NeMo's module was compiled in that process rather than
loaded from a .pyc) every ``b" "`` in the process is ``b"\\x00"`` from then on. Measured on an H200 (issue 23): once the
model had decoded on CUDA, uvicorn built each WebSocket handshake as ``b"GET" + b" " + path`` and websockets
refused it as ``invalid HTTP request line: GET\\x00/v1/realtime`` without answering, so every live session hung;
HTTP requests (parsed without that constant) kept working. The same corruption reaches anything else that uses a
one-byte ``b" "`` later in the process.

:func:`apply` routes NeMo's NVRTC calls through :class:`SafeNvrtc`, which hands NVRTC a log buffer of its own
when NeMo's is a one-byte (possibly shared) object (NeMo never reads the log). Without cuda-python nothing changes; on a CPU it is never called.
"""
from __future__ import annotations


class SafeNvrtc:
    """The cuda-python ``nvrtc`` module, except that the output-buffer calls never write into a shared object."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    @staticmethod
    def _own(buf: bytes) -> bytes:
        # bytes of length 0 or 1 may be CPython's shared singletons; length 2 is always a new object
        return b"\0" * 2 if len(buf) < 2 else buf

    def nvrtcGetProgramLog(self, prog, buf):
        return self._real.nvrtcGetProgramLog(prog, self._own(buf))

    def nvrtcGetPTX(self, prog, buf):
        if len(buf) < 2:      # NeMo reads its own buffer afterwards: refuse rather than hand NVRTC another one
            raise RuntimeError("NVRTC reported an empty PTX: the kernel did not compile")
        return self._real.nvrtcGetPTX(prog, buf)


# NeMo 3 builds a config's ``_target_`` only under approved prefixes (nemo.core.classes.common); a model whose
# encoder is clinasr.encoders.WhisperEncoder (configs/model/whisper_tdt_small.yaml) cannot be built or restored
# until this package's prefix is one of them
CLINASR_TARGETS = "clinasr.encoders."


def allow_clinasr_modules() -> bool:
    """Let NeMo instantiate ``clinasr.encoders`` classes from a config or a .nemo (idempotent; NeMo still checks
    that a target is a torch module). True when NeMo is importable."""
    try:
        from nemo.core.classes import common
    except ImportError:
        return False
    if CLINASR_TARGETS not in common.ALLOWED_TARGET_PREFIXES:
        common.ALLOWED_TARGET_PREFIXES.append(CLINASR_TARGETS)
    return True


def apply() -> bool:
    """:func:`allow_clinasr_modules`, and install :class:`SafeNvrtc` in NeMo's cuda_python_utils (idempotent). True
    when SafeNvrtc was installed now."""
    allow_clinasr_modules()
    try:
        from nemo.core.utils import cuda_python_utils as m
    except ImportError:
        return False
    real = getattr(m, "nvrtc", None)
    if real is None or isinstance(real, SafeNvrtc):
        return False
    m.nvrtc = SafeNvrtc(real)
    return True

