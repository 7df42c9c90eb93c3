#!/usr/bin/env bash
# Creates the peers' own virtual environments next to this script:
#   tools/peers/.venv-whisperlive     whisper-live 0.10.0   (collabora/WhisperLive)
#   tools/peers/.venv-whisperlivekit  whisperlivekit 0.2.26 (QuentinFuxa/WhisperLiveKit)
# Every package is pinned in requirements-<peer>.txt and installed with --no-deps,
# so no CUDA wheels (nvidia-*, triton) and none of the peers' unused extras come in.
# Both peers import torch at start-up, so torch is installed as the CPU-only
# wheel torch==2.13.0+cpu (the PyTorch CPU index is not reachable here; pip finds
# that wheel through this machine's pip find-links, /opt/wheels). Where it is not
# available, setup falls back to PyPI's torch==2.13.0, which is CUDA-bundled
# (several GB of nvidia-* wheels) - it says so loudly when that happens.
#
# Usage: tools/peers/setup.sh [whisperlive|whisperlivekit ...]   (default: both)
# Env:   PYTHON=python3.11 (interpreter for the venvs)
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3.11}
TORCH_CPU="torch==2.13.0+cpu"
TORCH_FALLBACK="torch==2.13.0"

install_torch() {
    local venv=$1
    if "$venv/bin/python" -c 'import torch, sys; sys.exit(0 if torch.__version__ == "2.13.0+cpu" else 1)' 2>/dev/null; then
        return 0
    fi
    if "$venv/bin/python" -m pip install --quiet --no-deps "$TORCH_CPU"; then
        # torch's runtime deps (filelock, typing-extensions, sympy, networkx, jinja2,
        # fsspec) are pinned in the lock files
        return 0
    fi
    echo "WARNING: $TORCH_CPU is not installable here; falling back to PyPI's $TORCH_FALLBACK," >&2
    echo "WARNING: which is the CUDA build and pulls several GB of nvidia-* wheels." >&2
    "$venv/bin/python" -m pip install --quiet "$TORCH_FALLBACK"
}

setup_peer() {
    local peer=$1 dist=$2 check=$3
    local venv=".venv-$peer" lock="requirements-$peer.txt"
    echo "== $peer: $venv"
    if [ ! -x "$venv/bin/python" ]; then
        "$PY" -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --no-deps -r "$lock"
    install_torch "$venv"
    # smoke test: the server modules and the runner's own imports load
    "$venv/bin/python" -c "$check; import websockets, numpy, soundfile; print('  import ok')"
    "$venv/bin/python" -c "import importlib.metadata as m, torch; print('  $dist', m.version('$dist'), '| torch', torch.__version__)"
}

peers=("$@")
[ ${#peers[@]} -gt 0 ] || peers=(whisperlive whisperlivekit)
for peer in "${peers[@]}"; do
    case "$peer" in
        whisperlive) setup_peer whisperlive whisper-live "import whisper_live.server, whisper_live.backend.faster_whisper_backend" ;;
        whisperlivekit) setup_peer whisperlivekit whisperlivekit "import whisperlivekit.core, whisperlivekit.audio_processor, whisperlivekit.local_agreement.backends" ;;
        *) echo "unknown peer: $peer (whisperlive|whisperlivekit)" >&2; exit 2 ;;
    esac
done
command -v ffmpeg >/dev/null || command -v sox >/dev/null || \
    echo "note: neither ffmpeg nor sox found; to make a 16 kHz mono wav: apt-get install -y ffmpeg" >&2
echo "done"
