"""No code path can load a pickle: a static check over every module we ship."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [
    path
    for folder in ("shared/recsys", "services", "bench")
    for path in (ROOT / folder).rglob("*.py")
    if "_pb2" not in path.name
]
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "joblib", "shelve", "marshal"}
UNSAFE_CALLS = {"torch.load", "pickle.load", "pickle.loads", "np.load", "numpy.load"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return ""


def test_sources_were_found() -> None:
    assert len(SOURCES) > 50


def test_no_module_imports_a_pickle_loader() -> None:
    offenders = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            else:
                continue
            offenders += [f"{path}:{node.lineno} {n}" for n in names if n in UNSAFE_MODULES]
    assert not offenders


def test_every_array_load_refuses_pickles_and_torch_load_is_unused() -> None:
    offenders = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or _dotted(node.func) not in UNSAFE_CALLS:
                continue
            name = _dotted(node.func)
            safe = name in ("np.load", "numpy.load") and any(
                k.arg == "allow_pickle"
                and isinstance(k.value, ast.Constant)
                and k.value.value is False
                for k in node.keywords
            )
            if not safe:
                offenders.append(f"{path}:{node.lineno} {name}")
    assert not offenders
