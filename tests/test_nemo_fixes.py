"""clinasr.nemo_fixes: NeMo's kernel compile must not write into CPython's shared b" " (issue 23's GPU hang).

NVRTC and the CUDA driver cannot exist on this CPU machine, so they are stood in for by objects that behave as
cuda-python's bindings do where it matters: ``nvrtcGetProgramLog`` writes the log (here: only its NUL terminator)
into the memory of the bytes object it is given. NeMo's own ``run_nvrtc`` runs against them unchanged, in a child
process: unfixed, it corrupts its b" " constant (on Python 3.12 the process-wide b" ", as in the GPU service)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ml

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import ctypes, enum, json, sys
from nemo.core.utils import cuda_python_utils as m
from clinasr import nemo_fixes

class nvrtcResult(enum.Enum):
    NVRTC_SUCCESS = 0
class CUresult(enum.Enum):
    CUDA_SUCCESS = 0
class cudaError_t(enum.Enum):
    cudaSuccess = 0

def write(buf, data):        # what a C function given a char* does: write into the object's own memory
    ctypes.memmove(ctypes.cast(ctypes.c_char_p(buf), ctypes.c_void_p).value, data, len(data))

OK = nvrtcResult.NVRTC_SUCCESS
class FakeNvrtc:
    nvrtcResult = nvrtcResult
    nvrtcCreateProgram = staticmethod(lambda src, name, n, headers, includes: (OK, "prog"))
    nvrtcCompileProgram = staticmethod(lambda prog, n, opts: (OK,))
    nvrtcGetProgramLogSize = staticmethod(lambda prog: (OK, 1))       # an empty log: just its NUL
    nvrtcGetPTXSize = staticmethod(lambda prog: (OK, 8))
    @staticmethod
    def nvrtcGetProgramLog(prog, buf):
        write(buf, b"\0")
        return (OK,)
    @staticmethod
    def nvrtcGetPTX(prog, buf):
        write(buf, b"// ptx\n\0")
        return (OK,)
class FakeDriver:
    CUresult = CUresult
    cuModuleLoadData = staticmethod(lambda ptr: (CUresult.CUDA_SUCCESS, "module"))
    cuModuleGetFunction = staticmethod(lambda module, name: (CUresult.CUDA_SUCCESS, "kernel:" + name.decode()))
class FakeRuntime:
    cudaError_t = cudaError_t

m.nvrtc, m.cuda, m.cudart = FakeNvrtc, FakeDriver, FakeRuntime
run = getattr(m.run_nvrtc, "__wrapped__", m.run_nvrtc)   # NeMo's function (past its "cuda-python installed?" check)
space = next(c for c in run.__code__.co_consts if c == b" ")   # NeMo's b" ": on Python 3.12 the process-wide one
out = {"installed": nemo_fixes.apply(), "installed_again": nemo_fixes.apply()}
out["fixed_kernel"] = run("kernel source", b"loop_conditional", b"p.cu")
out["fixed_space"] = space.hex()
m.nvrtc = FakeNvrtc                    # NeMo as shipped
out["unfixed_kernel"] = run("kernel source", b"loop_conditional", b"p.cu")
out["unfixed_space"] = space.hex()
print(json.dumps(out))
"""


def test_nemo_kernel_compile_leaves_the_shared_space_byte_alone():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "include"), os.environ.get("PYTHONPATH")]))}
    p = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["installed"] is True and out["installed_again"] is False      # idempotent
    assert out["fixed_kernel"] == "kernel:loop_conditional" and out["fixed_space"] == "20"
    # the stand-ins reproduce the bug the fix is for: NeMo as shipped writes NVRTC's NUL into its b" " constant
    assert out["unfixed_kernel"] == "kernel:loop_conditional" and out["unfixed_space"] == "00"

def test_apply_wraps_the_binding_once_and_passes_the_rest_through(monkeypatch):
    from nemo.core.utils import cuda_python_utils as m

    from clinasr import nemo_fixes

    real = getattr(m, "nvrtc", None)
    if real is None:          # no cuda-python: nothing to fix
        assert nemo_fixes.apply() is False and getattr(m, "nvrtc", None) is None
        return
    real = getattr(real, "_real", real)      # an earlier test may have loaded a model (and applied it) already
    monkeypatch.setattr(m, "nvrtc", real)
    assert nemo_fixes.apply() is True and isinstance(m.nvrtc, nemo_fixes.SafeNvrtc)
    assert nemo_fixes.apply() is False and m.nvrtc._real is real
    assert m.nvrtc.nvrtcResult is real.nvrtcResult and m.nvrtc.nvrtcCreateProgram is real.nvrtcCreateProgram


def test_loading_a_model_for_inference_installs_the_fix(monkeypatch):
    """Every decode (service, evaluation, references, experiment scoring) goes through Transcriber._setup."""
    from nemo.core.utils import cuda_python_utils as m

    from clinasr import nemo_fixes
    from clinasr.experiment import BASE_MODEL
    from clinasr.inference import Transcriber

    binding = object()
    monkeypatch.setattr(m, "nvrtc", binding, raising=False)
    Transcriber(BASE_MODEL, device="cpu")
    assert isinstance(m.nvrtc, nemo_fixes.SafeNvrtc) and m.nvrtc._real is binding
