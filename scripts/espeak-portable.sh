#!/usr/bin/env bash
# espeak-ng and flite for a machine whose image lacks them and cannot reach a package mirror (the GPU machines).
#   here:   scripts/espeak-portable.sh fetch     -> .espeak/ (Debian 12 debs + a stub libpcaudio, ~19 MB; git-ignored)
#   there:  eval "$(scripts/espeak-portable.sh install)"   -> unpacked under /opt/espeak, env exported
# libespeak-ng links libpcaudio (playback through ALSA/PulseAudio, which those machines lack too); the
# synthesis stage only retrieves samples, so a stub libpcaudio.so.0 with no audio device stands in for it.
# pyttsx3 travels as a wheel (.whl/, see bench/README or GPU.md).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd); dir="$top/.espeak"
case "${1:-}" in
fetch)
  grep -qx '/.espeak/' "$top/.git/info/exclude" 2>/dev/null || echo '/.espeak/' >> "$top/.git/info/exclude"
  mkdir -p "$dir" && cd "$dir"
  apt-get download espeak-ng-data libespeak-ng1 libsonic0 flite libflite1 libasound2 >/dev/null
  cat > pcaudio_stub.c <<'C'
#include <stddef.h>
#include <stdint.h>
struct audio_object;
struct audio_object *create_audio_device_object(const char *d, const char *a, const char *n) { return NULL; }
int audio_object_open(struct audio_object *o, int f, uint32_t r, uint8_t c) { return -1; }
void audio_object_close(struct audio_object *o) {}
void audio_object_destroy(struct audio_object *o) {}
int audio_object_write(struct audio_object *o, const void *d, size_t b) { return -1; }
int audio_object_drain(struct audio_object *o) { return 0; }
int audio_object_flush(struct audio_object *o) { return 0; }
const char *audio_object_strerror(struct audio_object *o, int e) { return "no audio device (stub libpcaudio)"; }
C
  gcc -shared -fPIC -O2 -Wl,-soname,libpcaudio.so.0 -o libpcaudio.so.0 pcaudio_stub.c
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$top/.whl" pyttsx3==2.99 2>&1 | grep -v WARNING || true
  ls -la "$dir" >&2 ;;
install)
  root=/opt/espeak; lib=$root/usr/lib/x86_64-linux-gnu
  if [ -d "$dir" ]; then   # else: an earlier call on this warm machine unpacked them (nothing carried this time)
    mkdir -p $root
    for f in "$dir"/*.deb; do dpkg -x "$f" $root; done
    cp "$dir/libpcaudio.so.0" $lib/
  elif [ ! -d $lib ]; then
    echo "no $dir and nothing under $root: carry .espeak (scripts/espeak-portable.sh fetch)" >&2; exit 3
  fi
  echo "export LD_LIBRARY_PATH=$lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH} ESPEAK_DATA_PATH=$lib PATH=$root/usr/bin:\$PATH" ;;
*) echo "usage: $0 fetch|install" >&2; exit 2 ;;
esac
