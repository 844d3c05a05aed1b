"""deploy: packing the folder with the store's excludes and the upload round trip."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from console_double import ConsoleState

from modelhost.client import ApiError, deploy
from modelhost.client._packing import pack_model_dir
from modelhost.errors import InvalidModelFolder

upload = pytest.importorskip("modelhost.store.upload", reason="store.upload not written yet")


def _model_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "model.py").write_text("async def predict(payload_dict, **kwargs):\n    return {}\n")
    (root / "model.json").write_text('{"download_files_from": "cache/x/"}')
    (root / "lib").mkdir()
    (root / "lib" / "helper.py").write_text("X = 1\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\0")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return root


def _names(archive: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return sorted(tar.getnames())


def test_pack_uses_store_file_selection(tmp_path: Path) -> None:
    root = _model_folder(tmp_path / "m")
    names = _names(pack_model_dir(root))
    expected = sorted(
        p.relative_to(root).as_posix() for p in upload.iter_files(root, upload.DEFAULT_EXCLUDES)
    )
    assert names == expected
    assert {"model.py", "model.json", "lib/helper.py"} <= set(names)
    assert not any(n.startswith(("__pycache__", ".git")) for n in names)


def test_pack_drops_local_owner_names(tmp_path: Path) -> None:
    archive = pack_model_dir(_model_folder(tmp_path / "m"))
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        assert {(m.uname, m.uid) for m in tar.getmembers()} == {("", 0)}


def test_pack_stores_symlinked_files_as_content(tmp_path: Path) -> None:
    """The server accepts only regular files and folders, so a link goes in as its target."""
    from modelhost.gateway.deployer import unpack

    root = _model_folder(tmp_path / "m")
    (tmp_path / "shared.py").write_text("Y = 2\n")
    (root / "lib" / "shared.py").symlink_to(tmp_path / "shared.py")
    archive = pack_model_dir(root)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        assert tar.getmember("lib/shared.py").isfile()
    (tmp_path / "out").mkdir()
    unpack(archive, tmp_path / "out")
    assert (tmp_path / "out" / "lib" / "shared.py").read_text() == "Y = 2\n"


def test_pack_requires_model_py_or_model_json(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelFolder, match=r"has neither model\.py nor model\.json"):
        pack_model_dir(tmp_path)
    (tmp_path / "model.json").write_text('{"llm": {"model": "x.gguf"}}')
    assert pack_model_dir(tmp_path)  # a no-code LLM folder
    with pytest.raises(InvalidModelFolder, match="is not a folder"):
        pack_model_dir(tmp_path / "missing")


def test_deploy_round_trip(
    console: tuple[str, ConsoleState], logged_in_env: str, tmp_path: Path
) -> None:
    url, state = console
    root = _model_folder(tmp_path / "m")
    api_url, version_url, meta_url = deploy(
        deployment_key="llm-depl",
        prefix="llm-models",
        model_name="llama",
        model_dir=root,
        api_url_base=url,
    )
    assert api_url == f"{url}/llm-models/llama/"
    assert version_url == api_url + "v1/"
    assert meta_url == api_url + "?get_meta=true"
    (sent,) = state.uploads
    assert sent["params"] == {"deployment": "llm-depl", "prefix": "llm-models", "name": "llama"}
    assert sent["type"] == "application/gzip"
    assert "model.py" in sent["names"] and "lib/helper.py" in sent["names"]


def test_deploy_defaults_to_current_folder(
    console: tuple[str, ConsoleState],
    logged_in_env: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, state = console
    monkeypatch.chdir(_model_folder(tmp_path / "cwd"))
    monkeypatch.setenv("MODELHOST_URL", url)
    deploy(deployment_key="d", prefix="p", model_name="m")
    assert "model.json" in state.uploads[0]["names"]


def test_deploy_error_shows_the_server_message(
    console: tuple[str, ConsoleState], logged_in_env: str, tmp_path: Path
) -> None:
    url, _ = console
    with pytest.raises(ApiError) as info:
        deploy("d", "p", "broken", model_dir=_model_folder(tmp_path / "m"), api_url_base=url)
    assert info.value.status == 400
    assert info.value.type == "invalid_model_folder"
    assert "model.py, line 3: invalid syntax" in str(info.value)
