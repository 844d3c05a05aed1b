"""Build llama.cpp's own ``llama-server`` and ``llama-batched-bench`` (the peer of
``bench.llm``) from the llama.cpp vendored in the llama-cpp-python sdist that pyproject.toml
pins, so the peer runs the very same ggml/llama code as modelhost's engine.

    python -m bench.llama_server_build          # build (first use: minutes), print the paths

The sdist is fetched with pip (``pip download --no-binary :all:``, which uses pip's own
cache), unpacked and built with cmake into ``.cache/llama.cpp-<version>/`` (gitignored):
only the two targets, ``-DLLAMA_CURL=OFF``, no OpenSSL, no web UI download, static
libraries, ``-j`` = cores. On a CPU with AMX (``amx_tile`` in /proc/cpuinfo) the AMX
kernels are left out of the build, and the peer also runs with ``--no-repack``: modelhost's
engine loads models with ``use_extra_bufts=False`` there (ggml's AMX matmul segfaulted on
this machine), so both sides compute with the same CPU kernels.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("llama-server", "llama-batched-bench")


class BuildError(RuntimeError):
    """The peer could not be built; the message says why and what to install."""


def pinned_version() -> str:
    """The llama-cpp-python version pinned in pyproject.toml's ``llm`` extra."""
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r"llama-cpp-python==([0-9][0-9A-Za-z.+-]*)", text)
    if not m:
        raise BuildError("pyproject.toml pins no llama-cpp-python==<version>")
    return m.group(1)


def cache_dir(version: str | None = None) -> Path:
    return ROOT / ".cache" / f"llama.cpp-{version or pinned_version()}"


def has_amx() -> bool:
    try:
        return "amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def runtime_flags() -> list[str]:
    """Flags every llama.cpp tool of ours gets, matching modelhost's model parameters."""
    return ["--no-repack"] if has_amx() else []


def cmake_args(src: Path, build: Path) -> list[str]:
    args = [
        "cmake", "-S", str(src), "-B", str(build),
        "-DCMAKE_BUILD_TYPE=Release",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_UI=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DBUILD_SHARED_LIBS=OFF",
    ]  # fmt: skip
    if has_amx():
        args += ["-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]
    return args


def _log(msg: str) -> None:
    print(f"[llama.cpp build] {msg}", file=sys.stderr, flush=True)


def _check_tools() -> None:
    missing = [t for t in ("cmake", "make") if shutil.which(t) is None]
    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        missing.append("a C++ compiler")
    if missing:
        raise BuildError(
            f"building llama-server needs {', '.join(missing)}: "
            "apt-get install -y cmake build-essential (or `make bench-install`)"
        )


def _fetch_source(version: str, cache: Path) -> Path:
    src = cache / "src"
    if (src / "CMakeLists.txt").exists():
        return src
    sdist_dir = cache / "sdist"
    sdist_dir.mkdir(parents=True, exist_ok=True)
    name = f"llama_cpp_python-{version}.tar.gz"
    sdist = sdist_dir / name
    if not sdist.exists():
        _log(f"downloading the llama-cpp-python {version} sdist with pip")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={version}", "-d", str(sdist_dir)],
            check=True,
        )  # fmt: skip
        if not sdist.exists():
            raise BuildError(f"pip download left no {name} in {sdist_dir}")
    _log(f"unpacking vendor/llama.cpp from {name}")
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    tmp = cache / "src.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            # (its .git file points into llama-cpp-python's repository, absent here)
            if m.name.startswith(prefix) and m.name not in (prefix, prefix + ".git"):
                m.name = m.name[len(prefix) :]
                members.append(m)
        tar.extractall(tmp, members=members, filter="data")
    tmp.rename(src)
    return src


def binaries(version: str | None = None) -> dict[str, Path]:
    build = cache_dir(version) / "build" / "bin"
    return {t: build / t for t in TARGETS}


def ensure_built(version: str | None = None) -> dict[str, Path]:
    """Paths of the built tools, building them first if they are not there (minutes; the
    progress goes to stderr). Concurrent callers wait for one build (a lock file)."""
    version = version or pinned_version()
    bins = binaries(version)
    if all(p.exists() for p in bins.values()):
        return bins
    cache = cache_dir(version)
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all(p.exists() for p in bins.values()):
            return bins
        _check_tools()
        src = _fetch_source(version, cache)
        build = cache / "build"
        jobs = os.cpu_count() or 1
        t0 = time.monotonic()
        _log(f"configuring llama.cpp (llama-cpp-python {version}) in {build}")
        subprocess.run(cmake_args(src, build), check=True, stdout=subprocess.DEVNULL)
        _log(f"compiling {' and '.join(TARGETS)} with -j{jobs} (about 6 min on 2 idle cores)")
        proc = subprocess.Popen(
            ["cmake", "--build", str(build), "--config", "Release", "-j", str(jobs),
             "--target", *TARGETS],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        tail: list[str] = []
        last = 0.0
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-40:]
            m = re.match(r"\[\s*(\d+)%\]", line)
            if m and time.monotonic() - last > 15:
                last = time.monotonic()
                _log(f"{m.group(1)}% ({time.monotonic() - t0:.0f} s)")
        if proc.wait() != 0:
            raise BuildError("llama.cpp build failed:\n" + "\n".join(tail))
        _log(f"built in {time.monotonic() - t0:.0f} s")
        missing = [str(p) for p in bins.values() if not p.exists()]
        if missing:
            raise BuildError(f"the build did not produce {', '.join(missing)}")
    return bins


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", help="llama-cpp-python version (default: pyproject's pin)")
    args = ap.parse_args()
    try:
        for name, path in ensure_built(args.version).items():
            print(f"{name}: {path}")
    except (BuildError, subprocess.CalledProcessError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
