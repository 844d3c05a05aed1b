"""`prt.models.create_model_config` / `ModelConfig` and the signature in `get_meta`: the xgboost
tutorial's "Adding model metadata" and "Reading model metadata" cells, as written, around a
real deploy (skipped when ``../shared/reference/practicus/`` is not there), plus the pure
parts."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compat.reference import REFERENCE
from e2e.harness import Server, free_port

pd = pytest.importorskip(
    "pandas", reason="pandas is the 'classic' extra: pip install -e '.[classic]'"
)
pytestmark = pytest.mark.slow

PAGE = REFERENCE / "extras" / "modeling" / "xgboost" / "xgboost.md"
DF = pd.DataFrame(
    {
        "age": [19, 33],
        "bmi": [27.9, 22.7],
        "children": [0, 1],
        "smoker_category": [True, False],
        "region_name": ["southwest", "northwest"],
        "charges": [16884.92, 21984.47],
    }
)


def test_create_model_config_and_signature(tmp_path: Path) -> None:
    import practicuscore as prt

    config = prt.models.create_model_config(
        df=DF, target="charges", model_name="My model", problem_type="Regression", score=0.9
    )
    assert isinstance(config, prt.models.ModelConfig)
    assert config.signature == {
        "inputs": [
            {"type": "long", "name": "age", "required": True},
            {"type": "double", "name": "bmi", "required": True},
            {"type": "long", "name": "children", "required": True},
            {"type": "boolean", "name": "smoker_category", "required": True},
            {"type": "string", "name": "region_name", "required": True},
        ],
        "outputs": [{"type": "double", "name": "charges", "required": True}],
    }
    # saved into an existing model.json: modelhost's own keys stay
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"env": {"A": "1"}}))
    config.save(path)
    saved = json.loads(path.read_text())
    assert saved["env"] == {"A": "1"} and saved["model_name"] == "My model"
    assert prt.models.ModelConfig.load(path).score == 0.9


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("config-home"), free_port()).start()
    yield srv
    srv.stop()


def _cell(page: str, needle: str) -> str:
    for block in re.findall(r"```python\n(.*?)```", page, flags=re.S):
        if needle in block:
            return str(block)
    raise AssertionError(f"no code block with {needle!r}")


def test_xgboost_tutorial_metadata_cells(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not PAGE.is_file():
        pytest.skip(f"{PAGE} is not there (../shared/reference/practicus/)")
    page = PAGE.read_text(encoding="utf-8")
    import requests

    import practicuscore as prt

    folder = tmp_path / "insurance"
    folder.mkdir()
    (folder / "model.py").write_text("def predict(payload_dict, **kwargs):\n    return {}\n")
    monkeypatch.chdir(folder)
    out: list[str] = []

    def show(*args: Any, **_kw: Any) -> None:
        out.append(" ".join(str(a) for a in args))

    # what the notebook's earlier cells defined
    scope: dict[str, Any] = {"prt": prt, "df": DF, "requests": requests, "print": show}
    exec(_cell(page, "prt.models.create_model_config("), scope)  # writes ./model.json
    deployed = server.deploy(folder, "models", "insurance")
    assert deployed["status"] == 200, deployed
    scope["api_url"] = deployed["api_url"]
    scope["token"] = server.session_token(deployed["api_url"])
    exec(_cell(page, 'model_config_dict["model_signature_json"]'), scope)

    meta = scope["model_config_dict"]
    assert meta["model_name"] == "My XG Boost Model" and meta["problem_type"] == "Regression"
    assert meta["name"] == "insurance" and meta["version"] == 1  # the server's own fields
    schema = scope["schema_dict"]
    assert json.loads(schema["outputs"]) == [
        {"type": "double", "name": "charges", "required": True}
    ]
    assert [c["name"] for c in json.loads(schema["inputs"])][:2] == ["age", "bmi"]
