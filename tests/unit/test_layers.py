"""chalicelib's layers, as docs/architecture.md draws them ("Where things
live"): a layer imports only the layers below it.  runtime.py, the
composition root, may import anything and only app.py imports it;
config.py and constants.py are read by every layer: config imports only
the domain's errors, its key records (a setting's value) and constants,
constants nothing of chalicelib."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.support.constants import PROJECT_DIR

LIB = PROJECT_DIR / "chalicelib"
#: top to bottom
LAYERS = ("api", "service", "pipeline", "adapters", "observability", "domain")
#: read by every layer: each may import only these
READ_BY_ALL = {"config": {"chalicelib.domain.errors", "chalicelib.domain.keys", "chalicelib.constants"},
               "constants": set()}


def _imports(path: Path) -> set[str]:
    """Every chalicelib module ``path`` imports, at its top or in a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("chalicelib"):
            found.update(f"{node.module}.{a.name}" if node.module.count(".") < 1 else node.module
                         for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("chalicelib"))
    return found


def _layer(module: str) -> str:
    return module.split(".")[1]


def _modules() -> list[tuple[str, Path]]:
    return [(".".join(p.relative_to(PROJECT_DIR).with_suffix("").parts), p)
            for p in sorted(LIB.rglob("*.py")) if p.name != "__init__.py"]


def test_every_chalicelib_module_is_in_a_layer_or_is_read_by_all_or_is_runtime():
    strays = [m for m, _ in _modules() if _layer(m) not in (*LAYERS, *READ_BY_ALL, "runtime")]
    assert not strays


def test_a_layer_imports_only_the_layers_below_it():
    upward = []
    for module, path in _modules():
        layer = _layer(module)
        if layer in ("runtime",):
            continue
        for imported in _imports(path):
            target = _layer(imported)
            if layer in READ_BY_ALL:
                if imported not in READ_BY_ALL[layer]:
                    upward.append(f"{module} -> {imported}")
            elif target == "runtime":
                upward.append(f"{module} -> {imported}")
            elif target in LAYERS and LAYERS.index(target) < LAYERS.index(layer):
                upward.append(f"{module} -> {imported}")
    assert not upward, "\n".join(upward)


def test_the_rule_sees_an_upward_import(tmp_path):
    module = tmp_path / "store.py"
    module.write_text("def f():\n    from chalicelib.service.sessions import SessionService\n")
    assert _imports(module) == {"chalicelib.service.sessions"}
