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
