#!/usr/bin/env bash
# Regenerates the small speech fixtures in tests/fixtures/ (committed; needs espeak-ng and sox:
# apt-get install espeak-ng sox). Each fixture's text is in tests/fixtures/<name>.txt.
set -euo pipefail
cd "$(dirname "$0")/../tests/fixtures"

speak() {  # name voice text
  local name=$1 voice=$2 text=$3
  espeak-ng -v "$voice" -s 150 -w "/tmp/$name.raw.wav" "$text"
  # 16 kHz mono 16-bit, 0.3 s of silence at both ends.
  sox "/tmp/$name.raw.wav" -r 16000 -c 1 -b 16 "$name.wav" pad 0.3 0.3
  printf '%s\n' "$text" > "$name.txt"
  rm -f "/tmp/$name.raw.wav"
}

speak speech_en en-us "The quick brown fox jumps over the lazy dog. Please transcribe this sentence for the platform test."
speak numbers_en en-us "Call me back at five five five, one two three four, before noon tomorrow."
# tiny.en writes "vLLM" as "V-N-R-M" (or "VLLM" when biased) and lowercases "kubernetes": the glossary test.
speak terms_en en-us "We deploy the model on Kubernetes with vLLM."
# A mu-law 8 kHz copy, as a call center sends it.
sox speech_en.wav -r 8000 -e mu-law speech_en_8k_mulaw.wav
# Not audio at all, for the bad-input tests.
printf 'this is not audio, just text pretending to be a wav file\n' > not_audio.wav

# Non-speech, for the hallucination guards (tests/integration/test_hallucination.py): Whisper
# writes stock phrases ("Thank you.", "시청해 주셔서 감사합니다") into audio like this when VAD is
# off. 10 s each, 16 kHz mono 16-bit (about 320 KB); the noise is seeded so a rerun gives the
# same file.
sox -n -r 16000 -c 1 -b 16 silence_10s.wav trim 0 10
sox -R -n -r 16000 -c 1 -b 16 noise_10s.wav synth 10 pinknoise vol 0.05
# A hold-music loop: a 2 s bar of plucked notes (C and A minor arpeggios) over a soft pad, repeated.
sox -n -r 16000 -c 1 -b 16 /tmp/hold_notes.wav \
  synth 0.25 pluck C4 : synth 0.25 pluck E4 : synth 0.25 pluck G4 : synth 0.25 pluck C5 \
  : synth 0.25 pluck A3 : synth 0.25 pluck C4 : synth 0.25 pluck E4 : synth 0.25 pluck A4
sox /tmp/hold_notes.wav /tmp/hold_loop.wav repeat 4
sox -n -r 16000 -c 1 -b 16 /tmp/hold_pad.wav synth 10 sine 130.81 sine 196 vol 0.15
sox -m /tmp/hold_loop.wav /tmp/hold_pad.wav -r 16000 -c 1 -b 16 hold_music_10s.wav trim 0 10 norm -6
rm -f /tmp/hold_notes.wav /tmp/hold_loop.wav /tmp/hold_pad.wav
