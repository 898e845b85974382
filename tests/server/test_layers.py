"""The server's layers, checked from the source (``ast``: nothing is imported or run).

High to low: ``server.main`` and ``server.loadtest`` (the entry points), ``server.api`` (HTTP), ``server.sessions``
(lifecycle and store), then ``server.rtc`` and ``server.worker`` (media and compute, peers at the bottom). A module
may import its own layer and the layers below it, never one above. ``server.settings`` and ``server.metrics`` are
usable by every layer and import none of them. ``lipar_core`` (the model library) imports nothing of ``server``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: rank of each part of ``server``: a module may import a module of the same or a lower rank only
LAYERS: dict[str, int] = {
    "server.main": 4,
    "server.loadtest": 4,
    "server.api": 3,
    "server.sessions": 2,
    "server.rtc": 1,
    "server.worker": 1,
    "server.settings": 0,
    "server.metrics": 0,
}


def layer_of(module: str) -> str | None:
    """The layer (a key of :data:`LAYERS`) a dotted module name belongs to; None outside ``server`` or for the
    ``server`` package itself."""
    for name in LAYERS:
        if module == name or module.startswith(name + "."):
            return name
    return None


def module_name(path: Path, root: Path = ROOT) -> str:
    """``server/api/routes/sessions.py`` → ``server.api.routes.sessions`` (a package's ``__init__``: the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of every import in ``source`` (also inside functions and ``TYPE_CHECKING``
    blocks), relative imports resolved against ``module``. ``from a.b import c`` yields ``a.b.c`` (``c`` may be a
    submodule; for the layer it makes no difference)."""
    package = module if is_package else module.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out += [(node.lineno, f"{base}.{a.name}" if a.name != "*" else base) for a in node.names]
    return out


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """What is wrong with the imports of one module of ``server`` (empty: nothing)."""
    own = layer_of(module)
    if own is None:
        if module == "server":
            return []
        return [
            f"{module}: not in any layer of tests/server/test_layers.py (add its part of server to LAYERS)"
        ]
    out = []
    for line, target in imported_modules(source, module, is_package):
        other = layer_of(target)
        if other is not None and LAYERS[other] > LAYERS[own]:
            out.append(
                f"{module} (line {line}) imports {target}: layer {own} must not import the higher layer {other}"
            )
    return out


def _modules(package: str) -> list[tuple[str, Path]]:
    return [(module_name(p), p) for p in sorted((ROOT / package).rglob("*.py"))]


def test_the_checker_flags_an_upward_import() -> None:
    """The import this test was written against (the session layer reaching for the API's schemas) and others."""
    bad = "from __future__ import annotations\n\nfrom server.api.schemas import TERMINAL_STATES, SessionCreate\n"
    assert violations("server.sessions.manager", bad) == [
        "server.sessions.manager (line 3) imports server.api.schemas.TERMINAL_STATES: layer server.sessions "
        "must not import the higher layer server.api",
        "server.sessions.manager (line 3) imports server.api.schemas.SessionCreate: layer server.sessions "
        "must not import the higher layer server.api",
    ]
    lazy = "def f():\n    import server.sessions.manager\n"
    assert violations("server.worker.pool", lazy) == [
        "server.worker.pool (line 2) imports server.sessions.manager: layer server.worker must not import the "
        "higher layer server.sessions"
    ]
    relative = "from ..api import deps\nfrom . import store\nfrom .. import settings\n"
    assert violations("server.sessions.manager", relative) == [
        "server.sessions.manager (line 1) imports server.api.deps: layer server.sessions must not import the "
        "higher layer server.api"
    ]
    assert violations("server.rtc", "from ..main import create_app\n", is_package=True) != []
    assert violations("server.settings", "from server.metrics import Metrics\n") == []
    assert violations("server.metrics", "from server.worker import messages\n") != []
    # downward and sideways imports are fine
    ok = "from server.sessions.types import SessionSpec\nfrom server.settings import Settings\nimport numpy\n"
    assert violations("server.api.routes.sessions", ok) == []
    assert violations("server.worker.pool", "from server.worker import messages as m\n") == []
    assert violations("server.newpart.x", "") != []  # a part of server that the layer map does not know


def test_no_module_of_server_imports_a_higher_layer() -> None:
    modules = _modules("server")
    assert len(modules) > 20  # the walk found the package
    problems = [
        v for name, path in modules for v in violations(name, path.read_text(), path.name == "__init__.py")
    ]
    assert not problems, "upward imports in server/:\n" + "\n".join(problems)


def test_lipar_core_does_not_import_server() -> None:
    problems = [
        f"{name} (line {line}) imports {target}: lipar_core must not depend on the server"
        for name, path in _modules("lipar_core")
        for line, target in imported_modules(path.read_text(), name, path.name == "__init__.py")
        if target == "server" or target.startswith("server.")
    ]
    assert not problems, "\n".join(problems)
