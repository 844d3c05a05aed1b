"""The Practicus "LangChain > Build" tutorial on a real server: every cell of its notebook as
written (region lists, `prt.models.deploy` of its model.py from the current folder, a session
token, a `PrtLangRequest` posted with `requests`), then the deployed model through
`langchain_practicus.ChatPracticus`. Skipped when ``../shared/reference/practicus/`` is not
there."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compat.reference import REFERENCE
from e2e.harness import Server, free_port

pytestmark = pytest.mark.slow

TUTORIAL = REFERENCE / "generative-ai" / "model-serving" / "custom" / "langchain"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("langchain-home"), free_port()).start()
    yield srv
    srv.stop()


def test_langchain_build_tutorial(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page, model_py = TUTORIAL / "build.md", TUTORIAL / "model.py"
    if not (page.is_file() and model_py.is_file()):
        pytest.skip(f"{TUTORIAL} is not there (../shared/reference/practicus/)")
    folder = tmp_path / "notebook"
    folder.mkdir()
    shutil.copyfile(model_py, folder / "model.py")
    # the region lists need one prefix and one deployment: a first model made them
    (tmp_path / "first").mkdir()
    (tmp_path / "first" / "model.py").write_text("def predict(payload_dict, **kw):\n    return 1\n")
    assert server.deploy(tmp_path / "first", "llm-apps", "first")["status"] == 200
    monkeypatch.chdir(folder)

    out: list[str] = []
    scope: dict[str, Any] = {"print": lambda *a, **_k: out.append(" ".join(map(str, a)))}
    cells = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)
    notebook = cells[: next(i for i, c in enumerate(cells) if "async def predict" in c)]
    with server.sdk_credentials():
        for cell in notebook:
            exec(cell, scope)

    assert scope["api_url"] == scope["expected_api_url"] == f"{server.url}/llm-apps/practicus-llm/"
    answer = scope["resp_object"]
    assert "You asked:\nWho is einstein?  Give me answer less than 100 words." in answer.content

    from langchain_practicus import ChatPracticus

    chat = ChatPracticus(endpoint_url=scope["api_url"], api_token=scope["token"], model_id="x")
    reply = chat.invoke("What is the capital of France?")
    assert "You asked:\nWhat is the capital of France?" in str(reply.content)
