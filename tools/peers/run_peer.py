#!/usr/bin/env python3
"""Run one open-source streaming-ASR peer against N concurrent live sessions.

Runs INSIDE the peer's own virtual environment (see setup.sh). Uses only the
standard library, websockets, numpy and soundfile: nothing from scribe.

    python run_peer.py --peer whisperlive|whisperlivekit --model CT2_DIR \
        --audio FILE.wav --sessions N --out OUT.json [--threads 2]

It starts the peer's server as a subprocess on a free loopback port, waits
until it accepts connections, replays the audio from N concurrent websocket
sessions at real-time pace (100 ms chunks on the wall clock; the sender never
waits for the server), signals end of audio the way each protocol expects,
waits (bounded) for the final output, stops the server and writes OUT.json:

    {"peer", "version", "sessions": [[event, ...], ...], "error",
     "server_peak_rss_mb", "cpu_percent", ...extra diagnostic keys}

event = {"t", "final", "text", "start", "end"}; t is seconds on the session's
audio clock (time of arrival minus (first chunk send time - 0.1 s)), so an
event at t=5.0 arrived when 5.0 s of audio had been captured.

The runner always exits 0 once arguments are valid; any failure is reported in
"error" (with the server log tail when the server died).
"""

import argparse
import asyncio
import ctypes
import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid

import numpy as np
import soundfile as sf
import websockets

SR = 16000
CHUNK_S = 0.1
CHUNK_SAMPLES = int(SR * CHUNK_S)
HOST = "127.0.0.1"

PEERS = {
    "whisperlive": {"dist": "whisper-live"},
    "whisperlivekit": {"dist": "whisperlivekit"},
}

# WhisperLive's PyPI wheel ships no server entry point (run_server.py lives in
# the repository root), so this mirrors run_server.py: TranscriptionServer().run
# with the faster_whisper backend, a custom CTranslate2 model path and
# single_model=True (run_server.py's default, i.e. without --no_single_model).
# Deviations: loopback host instead of 0.0.0.0, a free port, max_clients raised
# to at least N, max_connection_time long enough for the audio.
WL_LAUNCHER = r"""
import sys
from whisper_live.server import TranscriptionServer
host, port, model, max_clients, max_conn = sys.argv[1:6]
TranscriptionServer().run(
    host,
    port=int(port),
    backend="faster_whisper",
    faster_whisper_custom_model_path=model,
    single_model=True,
    max_clients=int(max_clients),
    max_connection_time=int(max_conn),
)
"""


class PeerError(Exception):
    """A failure with a reason worth reporting as is."""


# --------------------------------------------------------------------------
# server process + /proc accounting
# --------------------------------------------------------------------------


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _die_with_parent():
    # Linux: the server gets SIGKILL if this runner dies without cleaning up.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _read_stat(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read().decode("ascii", "replace")
    rest = data[data.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); ppid=4, utime=14, stime=15, cutime=16, cstime=17
    ppid = int(rest[1])
    ticks = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
    return ppid, ticks


def _rss_bytes(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeMonitor(threading.Thread):
    """Samples RSS (sum over the server's process tree) and CPU ticks."""

    def __init__(self, root_pid, interval=0.2):
        super().__init__(daemon=True)
        self.root = root_pid
        self.interval = interval
        self.peak_rss = 0
        self.peak_hwm = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def tree(self):
        """Pids of the root and all its descendants."""
        parents = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    parents[int(name)] = _read_stat(int(name))[0]
                except (OSError, ValueError, IndexError):
                    pass
        if self.root not in parents:
            return []
        children = {}
        for pid, ppid in parents.items():
            children.setdefault(ppid, []).append(pid)
        out, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, []))
        return out

    def cpu_ticks(self):
        """utime+stime (+ reaped children's) summed over the live tree."""
        total = 0
        for pid in self.tree():
            try:
                total += _read_stat(pid)[1]
            except (OSError, ValueError, IndexError):
                pass
        return total

    def sample(self):
        """Record one RSS sample of the tree."""
        rss = 0
        for pid in self.tree():
            try:
                rss += _rss_bytes(pid)
            except (OSError, ValueError, IndexError):
                pass
        hwm = _hwm_bytes(self.root)
        with self._lock:
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_hwm = max(self.peak_hwm, hwm)

    def run(self):
        """Sample until stopped."""
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def stop(self):
        """Stop sampling."""
        self._stop.set()

    def peak_mb(self):
        """Peak RSS in MiB."""
        with self._lock:
            return round(max(self.peak_rss, self.peak_hwm) / (1024 * 1024), 1)


class Server:
    """The peer's server subprocess, its log and its /proc monitor."""

    def __init__(self, argv, env, log_path):
        self.argv = argv
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.log.write(("\n=== " + " ".join(argv) + "\n").encode())
        self.log.flush()
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.stopped = False
        self.monitor = TreeMonitor(self.proc.pid)
        self.monitor.start()

    def last_exception(self):
        """The last 'SomethingError: ...' line of the log, for a readable reason."""
        for line in reversed(self.log_tail(n=200, limit=10**6).splitlines()):
            head = line.split(":", 1)[0].strip()
            if ":" in line and head.endswith(("Error", "Exception")) and " " not in head:
                return line.strip()
        return None

    def log_tail(self, n=25, limit=3000):
        """The last n lines of the server log, at most limit characters."""
        try:
            self.log.flush()
            with open(self.log_path, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - 64 * 1024))
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])[-limit:]

    def wait_accepting(self, port, timeout):
        """Poll until the server accepts TCP connections on port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                exc = self.last_exception()
                raise PeerError(
                    f"server exited with code {self.proc.returncode} before accepting "
                    f"connections" + (f": {exc}" if exc else "") + f"\nserver log tail:\n{self.log_tail()}"
                )
            try:
                with socket.create_connection((HOST, port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise PeerError(f"server did not accept connections within {timeout:.0f} s; log tail:\n{self.log_tail()}")

    def stop(self):
        """Stop the server's process group (SIGTERM, then SIGKILL); idempotent."""
        if self.stopped:
            return
        self.stopped = True
        self.monitor.sample()
        self.monitor.stop()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        else:
            # the server itself is gone; make sure nothing of its group lingers
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.log.close()


# --------------------------------------------------------------------------
# peers
# --------------------------------------------------------------------------


def _wl_seconds(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _wlk_seconds(value):
    """WhisperLiveKit formats times as H:MM:SS.cc."""
    if value is None:
        return None
    try:
        parts = str(value).split(":")
        secs = 0.0
        for p in parts:
            secs = secs * 60 + float(p)
        return secs
    except ValueError:
        return None


class Session:
    """One live client session; subclasses speak a peer's protocol."""

    def __init__(self, idx, cfg):
        self.idx = idx
        self.cfg = cfg
        self.events = []
        self.raw = []
        self.error = None
        self.clock0 = None  # audio clock origin (loop time)
        self.last_change = None
        self.audio_done_at = None
        self.final_text = ""

    def now(self):
        """Seconds on this session's audio clock."""
        loop_t = asyncio.get_running_loop().time()
        return round(loop_t - self.clock0, 4) if self.clock0 is not None else 0.0

    def emit(self, final, text, start, end):
        """Record one event."""
        self.events.append({"t": self.now(), "final": bool(final), "text": text, "start": start, "end": end})
        self.last_change = asyncio.get_running_loop().time()

    def keep_raw(self, raw):
        """Store a raw server message when --keep-raw is set."""
        if self.cfg.keep_raw:
            self.raw.append({"t": self.now(), "msg": raw})

    async def send_audio(self, ws, chunks):
        """Send chunk i at t_first + i * 0.1 s, never waiting for the server."""
        loop = asyncio.get_running_loop()
        t_first = loop.time()
        self.clock0 = t_first - CHUNK_S
        for i, chunk in enumerate(chunks):
            delay = t_first + i * CHUNK_S - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await ws.send(chunk)
        self.audio_done_at = loop.time()


class WhisperLiveSession(Session):
    """collabora/WhisperLive websocket protocol (whisper_live/server.py).

    Client -> server: JSON options, then float32 16 kHz frames (binary), then
    b"END_OF_AUDIO". Server -> client: {"uid","message":"SERVER_READY"}, then
    {"uid","segments":[{"start","end","text","completed"}]} carrying the last
    send_last_n_segments completed segments plus the current incomplete one.
    """

    def __init__(self, idx, cfg):
        super().__init__(idx, cfg)
        self.uid = f"peerbench-{idx}-{uuid.uuid4().hex[:8]}"
        self.seen_final = set()
        self.finals = []
        self.last_interim = None
        self.pending = False  # latest message ended with an incomplete segment

    def options(self):
        """The JSON options message."""
        # The official whisper_live.client.Client's defaults.
        return {
            "uid": self.uid,
            "language": self.cfg.language,
            "task": "transcribe",
            "model": self.cfg.model,
            "use_vad": True,
            "send_last_n_segments": 10,
            "no_speech_thresh": 0.45,
            "clip_audio": False,
            "same_output_threshold": 10,
            "enable_translation": False,
        }

    async def wait_ready(self, ws, timeout):
        """Wait for SERVER_READY; raise PeerError on WAIT/ERROR or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerError(f"no SERVER_READY within {timeout:.0f} s")
            raw = await asyncio.wait_for(ws.recv(), timeout=left)
            msg = json.loads(raw)
            if msg.get("message") == "SERVER_READY":
                return
            if msg.get("status") in ("WAIT", "ERROR"):
                raise PeerError(f"server refused session: {raw}")

    def handle(self, raw):
        """Turn one server message into events."""
        self.keep_raw(raw)
        msg = json.loads(raw)
        if msg.get("status") == "ERROR":
            self.error = f"server error: {msg.get('message')}"
            return
        if msg.get("message") == "DISCONNECT":
            self.error = "server disconnected the session (max_connection_time)"
            return
        segments = msg.get("segments")
        if not segments:
            return
        for seg in segments:
            text = seg.get("text", "")
            start, end = _wl_seconds(seg.get("start")), _wl_seconds(seg.get("end"))
            if seg.get("completed"):
                key = (seg.get("start"), seg.get("end"), text)
                if key not in self.seen_final:
                    self.seen_final.add(key)
                    self.finals.append(text)
                    self.emit(True, text, start, end)
            else:
                key = (seg.get("start"), seg.get("end"), text)
                if key != self.last_interim and text.strip():
                    self.last_interim = key
                    self.emit(False, text, start, end)
        self.pending = not segments[-1].get("completed", False)

    async def receive(self, ws):
        """Handle server messages until the connection ends."""
        try:
            async for raw in ws:
                if isinstance(raw, str):
                    self.handle(raw)
        except websockets.ConnectionClosed:
            pass

    async def run(self, port, audio_f32):
        """Run the whole session."""
        cfg = self.cfg
        chunks = [audio_f32[i : i + CHUNK_SAMPLES].tobytes() for i in range(0, len(audio_f32), CHUNK_SAMPLES)]
        async with websockets.connect(
            f"ws://{HOST}:{port}", max_size=None, ping_interval=None, open_timeout=60, close_timeout=5
        ) as ws:
            await ws.send(json.dumps(self.options()))
            await self.wait_ready(ws, cfg.ready_timeout)
            receiver = asyncio.create_task(self.receive(ws))
            await self.send_audio(ws, chunks)
            loop = asyncio.get_running_loop()
            deadline = self.clock0 + cfg.audio_s + cfg.final_timeout
            # WhisperLive has no explicit flush: END_OF_AUDIO makes the server
            # close at once, and the last segment becomes completed=true only
            # after the server re-transcribes the same tail same_output_threshold
            # times. So (like the official client's wait_before_disconnect) wait
            # for the output to settle: no incomplete segment left after a change
            # that arrived post-audio (+1 s grace), or --wl-idle-s without any
            # change, or the deadline.
            while not receiver.done():
                now = loop.time()
                last = max(self.last_change or 0.0, self.audio_done_at)
                if (
                    not self.pending
                    and self.last_change is not None
                    and self.last_change >= self.audio_done_at
                    and now - last >= 1.0
                ):
                    break
                if now - last >= cfg.wl_idle_s:
                    break
                if now >= deadline:
                    self.error = f"timed out: output still pending {cfg.final_timeout:.0f} s after the end of the audio"
                    break
                await asyncio.sleep(0.05)
            if not receiver.done():
                try:
                    await ws.send(b"END_OF_AUDIO")
                except websockets.ConnectionClosed:
                    pass
                try:
                    await asyncio.wait_for(asyncio.shield(receiver), timeout=10)
                except TimeoutError:
                    receiver.cancel()
        self.final_text = " ".join(t.strip() for t in self.finals if t.strip())


class WhisperLiveKitSession(Session):
    """WhisperLiveKit /asr websocket protocol (whisperlivekit/basic_server.py).

    With --pcm-input the server takes raw s16le 16 kHz mono bytes; an empty
    binary message ends the stream. Server -> client: {"type":"config",...},
    then FrontData dicts {"status","lines":[{"speaker","text","start","end"}],
    "buffer_transcription",...} whenever something changed, and finally
    {"type":"ready_to_stop"} once all audio has been processed.
    """

    def __init__(self, idx, cfg):
        super().__init__(idx, cfg)
        self.seen_lines = set()
        self.last_buffer = ""
        self.last_lines = []
        self.ready_to_stop = False

    def handle(self, raw):
        """Turn one server message into events."""
        self.keep_raw(raw)
        msg = json.loads(raw)
        mtype = msg.get("type")
        if mtype == "config":
            return
        if mtype == "ready_to_stop":
            self.ready_to_stop = True
            return
        if mtype == "error" or msg.get("status") == "error":
            self.error = f"server error: {msg.get('error')}"
            return
        if "lines" not in msg:
            return
        lines = [ln for ln in msg.get("lines") or [] if (ln.get("text") or "").strip()]
        for ln in lines:
            key = (ln.get("start"), ln.get("end"), ln.get("text"))
            if key not in self.seen_lines:
                self.seen_lines.add(key)
                self.emit(True, ln.get("text"), _wlk_seconds(ln.get("start")), _wlk_seconds(ln.get("end")))
        self.last_lines = lines
        buf = msg.get("buffer_transcription") or ""
        if buf != self.last_buffer:
            self.last_buffer = buf
            if buf.strip():
                self.emit(False, buf, None, None)

    async def receive(self, ws):
        """Handle server messages until the connection ends."""
        try:
            async for raw in ws:
                if isinstance(raw, str):
                    self.handle(raw)
                    if self.ready_to_stop:
                        return
        except websockets.ConnectionClosed:
            pass

    async def run(self, port, audio_i16):
        """Run the whole session."""
        cfg = self.cfg
        chunks = [audio_i16[i : i + CHUNK_SAMPLES].tobytes() for i in range(0, len(audio_i16), CHUNK_SAMPLES)]
        async with websockets.connect(
            f"ws://{HOST}:{port}/asr", max_size=None, ping_interval=None, open_timeout=60, close_timeout=5
        ) as ws:
            receiver = asyncio.create_task(self.receive(ws))
            await self.send_audio(ws, chunks)
            await ws.send(b"")  # end of stream (AudioProcessor.process_audio(b""))
            left = self.clock0 + cfg.audio_s + cfg.final_timeout - asyncio.get_running_loop().time()
            try:
                await asyncio.wait_for(asyncio.shield(receiver), timeout=max(1.0, left))
            except TimeoutError:
                receiver.cancel()
                self.error = f"timed out: no ready_to_stop {cfg.final_timeout:.0f} s after the end of the audio"
            if not self.ready_to_stop and self.error is None:
                self.error = "connection closed before ready_to_stop"
        self.final_text = " ".join(
            (ln.get("text") or "").strip() for ln in self.last_lines if ln.get("speaker") != -2
        ).strip()


# --------------------------------------------------------------------------
# orchestration
# --------------------------------------------------------------------------


def server_env(threads):
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    env["HF_HUB_OFFLINE"] = "1"  # nothing may come from the hub: fail fast, not hang
    env["PYTHONUNBUFFERED"] = "1"
    return env


def server_argv(cfg, port):
    if cfg.peer == "whisperlive":
        max_clients = max(4, cfg.sessions + 1)  # +1: the warm-up session
        max_conn = int(max(300, cfg.audio_s + cfg.final_timeout + 120))
        return [sys.executable, "-c", WL_LAUNCHER, HOST, str(port), cfg.model, str(max_clients), str(max_conn)]
    exe = os.path.join(os.path.dirname(sys.executable), "whisperlivekit-server")
    return [
        exe,
        "--host",
        HOST,
        "--port",
        str(port),
        "--backend",
        "faster-whisper",
        "--backend-policy",
        "localagreement",
        "--model_dir",
        cfg.model,
        "--lan",
        cfg.language,
        "--pcm-input",
        "--warmup-file",
        cfg.audio,
    ]


async def wl_warmup(port, cfg, audio_f32):
    """Run one unmeasured WhisperLive session that loads the model and transcribes 2 s.

    WhisperLive loads the model on the first connection (run_server.py has no
    preload); this is the counterpart of WhisperLiveKit's own start-up warm-up.
    """
    async with websockets.connect(
        f"ws://{HOST}:{port}", max_size=None, ping_interval=None, open_timeout=60, close_timeout=5
    ) as ws:
        s = WhisperLiveSession(-1, cfg)
        await ws.send(json.dumps(s.options()))
        await s.wait_ready(ws, cfg.ready_timeout)
        await ws.send(audio_f32[: 2 * SR].tobytes())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout=deadline - time.monotonic())
            except TimeoutError:
                break
            if isinstance(raw, str) and "segments" in json.loads(raw):
                break
        await ws.send(b"END_OF_AUDIO")
        try:
            await asyncio.wait_for(ws.wait_closed(), timeout=10)
        except TimeoutError:
            pass


async def run_sessions(cfg, port, audio_i16):
    audio_f32 = audio_i16.astype(np.float32) / 32768.0
    if cfg.peer == "whisperlive":
        sessions = [WhisperLiveSession(i, cfg) for i in range(cfg.sessions)]
        payload = audio_f32
    else:
        sessions = [WhisperLiveKitSession(i, cfg) for i in range(cfg.sessions)]
        payload = audio_i16

    async def one(s):
        try:
            await s.run(port, payload)
        except Exception as e:  # noqa: BLE001 - one failed session must not stop the others
            s.error = f"{type(e).__name__}: {e}"

    await asyncio.gather(*(one(s) for s in sessions))
    return sessions


def load_audio(path):
    data, sr = sf.read(path, dtype="int16", always_2d=True)
    if sr != SR or data.shape[1] != 1:
        raise PeerError(f"audio must be 16 kHz mono, got {sr} Hz x {data.shape[1]} channels")
    return np.ascontiguousarray(data[:, 0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peer", required=True, choices=sorted(PEERS))
    ap.add_argument("--model", required=True, help="local CTranslate2 Whisper model directory")
    ap.add_argument("--audio", required=True, help="16 kHz mono wav")
    ap.add_argument("--sessions", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS/MKL_NUM_THREADS for the server (default 2)")
    ap.add_argument("--language", default="en")
    ap.add_argument(
        "--final-timeout", type=float, default=120.0, help="max seconds after the end of audio to wait for final output"
    )
    ap.add_argument(
        "--ready-timeout", type=float, default=300.0, help="max seconds for the server to start (model load, warm-up)"
    )
    ap.add_argument(
        "--wl-idle-s",
        type=float,
        default=30.0,
        help="WhisperLive: send END_OF_AUDIO after this long without any change",
    )
    ap.add_argument("--server-log", default=None, help="default: OUT.server.log")
    ap.add_argument("--keep-raw", action="store_true", help="also store every raw server message per session (large)")
    cfg = ap.parse_args()
    if cfg.sessions < 1:
        ap.error("--sessions must be >= 1")
    cfg.model = os.path.abspath(cfg.model)
    cfg.audio = os.path.abspath(cfg.audio)
    log_path = cfg.server_log or cfg.out + ".server.log"

    result = {
        "peer": cfg.peer,
        "version": None,
        "sessions": [[] for _ in range(cfg.sessions)],
        "error": None,
        "server_peak_rss_mb": None,
        "cpu_percent": None,
        "final_texts": [],
        "session_errors": [],
        "audio_s": None,
        "server_ready_s": None,
        "run_wall_s": None,
        "threads": cfg.threads,
        "server_cmd": None,
        "server_log": os.path.abspath(log_path),
    }
    try:
        result["version"] = importlib.metadata.version(PEERS[cfg.peer]["dist"])
    except importlib.metadata.PackageNotFoundError:
        result["error"] = (
            f"{PEERS[cfg.peer]['dist']} is not installed in {sys.prefix}; "
            "run tools/peers/setup.sh and use that peer's venv python"
        )
        write_out(cfg.out, result)
        return 0

    # turn SIGTERM/SIGINT into exceptions so the server is always stopped
    def _raise(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)

    server = None
    try:
        if not os.path.isdir(cfg.model):
            raise PeerError(f"model directory not found: {cfg.model}")
        audio = load_audio(cfg.audio)
        cfg.audio_s = len(audio) / SR
        result["audio_s"] = round(cfg.audio_s, 3)

        t_spawn = time.monotonic()
        for attempt in range(3):
            port = free_port()
            argv = server_argv(cfg, port)
            result["server_cmd"] = [a if a != WL_LAUNCHER else "<WL_LAUNCHER>" for a in argv]
            server = Server(argv, server_env(cfg.threads), log_path)
            try:
                server.wait_accepting(port, cfg.ready_timeout)
                break
            except PeerError as e:
                if "address already in use" not in str(e).lower() or attempt == 2:
                    raise
                server.stop()  # lost the race for the free port: try another
                server = None
        if cfg.peer == "whisperlive":
            asyncio.run(wl_warmup(port, cfg, audio.astype(np.float32) / 32768.0))
        result["server_ready_s"] = round(time.monotonic() - t_spawn, 2)
        if server.proc.poll() is not None:
            raise PeerError(f"server exited during start-up; log tail:\n{server.log_tail()}")

        ticks0, wall0 = server.monitor.cpu_ticks(), time.monotonic()
        sessions = asyncio.run(run_sessions(cfg, port, audio))
        ticks1, wall1 = server.monitor.cpu_ticks(), time.monotonic()
        hz = os.sysconf("SC_CLK_TCK")
        result["cpu_percent"] = round((ticks1 - ticks0) / hz / max(wall1 - wall0, 1e-9) * 100, 1)
        result["run_wall_s"] = round(wall1 - wall0, 2)
        result["sessions"] = [s.events for s in sessions]
        result["final_texts"] = [s.final_text for s in sessions]
        result["session_errors"] = [s.error for s in sessions]
        if cfg.keep_raw:
            result["raw"] = [s.raw for s in sessions]
        errs = [f"session {s.idx}: {s.error}" for s in sessions if s.error]
        if server.proc.poll() is not None:
            errs.append(
                f"server exited with code {server.proc.returncode} during the run; log tail:\n{server.log_tail()}"
            )
        if errs:
            result["error"] = "; ".join(errs)
    except KeyboardInterrupt as e:
        result["error"] = f"interrupted ({e})"
    except PeerError as e:
        result["error"] = str(e)
    except Exception as e:  # noqa: BLE001 - any failure is reported in the JSON, exit 0
        tail = server.log_tail() if server else ""
        result["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}" + (
            f"\nserver log tail:\n{tail}" if tail else ""
        )
    finally:
        if server is not None:
            server.stop()
            result["server_peak_rss_mb"] = server.monitor.peak_mb()
        write_out(cfg.out, result)
    return 0


def write_out(path, result):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
