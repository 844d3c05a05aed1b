"""The worker seam: gateway-side code (`supervision`, `gateway`) and worker-side code
(`worker`) import nothing of each other; both import `wire`, which imports neither."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import modelhost

SRC = Path(modelhost.__file__).parent
GATEWAY_SIDE = ("modelhost.supervision", "modelhost.gateway")
WORKER_SIDE = ("modelhost.worker",)


def imports_of(package: str) -> dict[str, set[str]]:
    """Every module each file of `package` imports (absolute names, lazy imports included)."""
    found: dict[str, set[str]] = {}
    for path in sorted((SRC / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        found[str(path.relative_to(SRC))] = names
    return found


def crossings(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{file} imports {name}"
        for file, names in imports_of(package).items()
        for name in sorted(names)
        if name.startswith(tuple(f + "." for f in forbidden)) or name in forbidden
    ]


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("worker", GATEWAY_SIDE),
        ("supervision", WORKER_SIDE),
        ("gateway", WORKER_SIDE),
        ("wire", GATEWAY_SIDE + WORKER_SIDE),
    ],
)
def test_no_import_crosses_the_seam(package: str, forbidden: tuple[str, ...]) -> None:
    assert imports_of(package), f"no modules found under {SRC / package}"
    assert crossings(package, forbidden) == []


def test_the_check_sees_a_crossing() -> None:
    """The check itself can fail: the gateway does import the supervisor."""
    assert crossings("gateway", ("modelhost.supervision",)) != []
