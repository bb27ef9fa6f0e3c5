"""espeak-ng in a small process that forks a child per utterance (run as a script by clinasr.synth.tts.EspeakEngine).

libespeak-ng keeps waveform state from one utterance to the next, so a process that speaks many utterances gives
the same one different audio depending on what it spoke before. This process initialises the library, speaks one
fixed utterance, and then answers each request in a child forked from that state: the audio depends on the request
alone. It imports nothing but the library's ctypes binding (~11 MB resident), so a fork costs ~0.5 ms, where a
synthesis worker with numpy and torch loaded (~300 MB) took ~16 ms.

Protocol on stdin/stdout: frames of a 4-byte little-endian length and a pickle. The first frame out is
("ready", sample_rate). Each request ("synth", text, voice, rate, pitch) or ("phonemes", text, voice) gets one
frame back, ("ok", raw 16-bit PCM bytes or phoneme string) or ("error", message). :func:`speak` and
:func:`phonemes` are also what the engine calls in its own process when it does not isolate.
"""
import ctypes
import os
import pickle
import struct
import sys


def _frame(out, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(struct.pack("<I", len(data)) + data)
    out.flush()


def _select(e, voice: str) -> None:
    if e.SetVoiceByName(voice.encode()) != e.EE_OK:
        raise RuntimeError(f"espeak-ng could not select voice {voice}")


def speak(e, text: str, voice: str, rate: int, pitch: int) -> bytes:
    """``text`` in ``voice`` as raw 16-bit PCM at the library's rate (``e``: pyttsx3's initialised binding)."""
    _select(e, voice)
    e.SetParameter(e.RATE, int(rate), 0)
    e.SetParameter(e.PITCH, int(pitch), 0)
    chunks: list[bytes] = []

    def on_samples(wav, n, events):
        if n > 0 and wav:
            chunks.append(ctypes.string_at(wav, n * 2))
        return 0   # go on

    e.SetSynthCallback(on_samples)   # the library has one callback: this call's (the binding keeps it alive)
    # PHONEMES: [[...]] (pronunciation overrides, clinasr.synth.pronounce) is read as espeak phoneme mnemonics, as
    # the espeak-ng command line does; normalised text has no brackets.
    rc = e.Synth(text.encode("utf-8"), flags=e.CHARS_UTF8 | e.PHONEMES | e.ENDPAUSE)
    if rc != e.EE_OK:
        raise RuntimeError(f"espeak-ng synthesis failed (code {rc}) for voice {voice}")
    return b"".join(chunks)


def phonemes(e, text: str, voice: str) -> str:
    """``text`` as ``voice``'s phoneme mnemonics (what ``espeak-ng -x`` prints), clauses joined by a short pause."""
    _select(e, voice)
    f = e.dll.espeak_TextToPhonemes
    f.restype, f.argtypes = ctypes.c_char_p, [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
    buf = ctypes.create_string_buffer(text.encode("utf-8"))
    ptr = ctypes.c_void_p(ctypes.addressof(buf))
    clauses = []
    while ptr.value:
        out = f(ctypes.byref(ptr), e.CHARS_UTF8, 0)
        if out:
            clauses.append(out.decode("utf-8", "replace").strip())
    return " _: ".join(c for c in clauses if c)


def main() -> None:
    from pyttsx3.drivers import _espeak as e

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    rate = e.Initialize(e.AUDIO_OUTPUT_SYNCHRONOUS, 500)
    if rate <= 0:
        _frame(stdout, ("error", "espeak-ng failed to initialise (is espeak-ng-data installed? ESPEAK_DATA_PATH)"))
        return
    known = sorted(v.identifier.decode("utf-8", "replace").lower() for v in e.ListVoices(None))
    speak(e, "a", "gmw/en" if "gmw/en" in known else known[0], 175, 50)   # the library's one-time set-up, ~1 s
    ops = {"synth": speak, "phonemes": phonemes}
    _frame(stdout, ("ready", rate))
    while True:
        head = stdin.read(4)
        if len(head) < 4:
            return
        req = pickle.loads(stdin.read(struct.unpack("<I", head)[0]))
        pid = os.fork()
        if pid == 0:   # the child: one answer, then out without Python's exit handlers
            try:
                try:
                    _frame(stdout, ("ok", ops[req[0]](e, *req[1:])))
                except Exception as ex:   # noqa: BLE001 - reported to the engine, never raised here
                    _frame(stdout, ("error", str(ex) or type(ex).__name__))
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        if status != 0:   # died before answering (a signal): the engine still gets one frame
            _frame(stdout, ("error", f"espeak-ng synthesis process died (wait status {status})"))


if __name__ == "__main__":
    main()
