"""The house rules a newcomer relies on: every module imports, no import cycles, short modules, a public API."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import sqft_ov

ROOT = Path(sqft_ov.__file__).parent
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
LONG_REASON = "Long because"  # a function over the limit states why in its docstring, starting with this


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (packages as their __init__.py)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """sqft_ov modules `name` imports anywhere in its file (functions included: those run too, later).

    `from a.b import c` counts as importing `a.b.c` when that is a module, else `a.b`.
    """
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "sqft_ov")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "sqft_ov":
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


NNCF_INTERNALS = "sqft_ov.adapters.qa_lora"  # the one module below NNCF's public facade, checked at run time


def _nncf_internal_imports(path: Path) -> list[str]:
    """`from nncf.x import y` / `import nncf.x` in a file: anything but `import nncf` / `from nncf import name`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("nncf.")]
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("nncf."):
            found.append(node.module)
    return found


def test_nncf_internals_are_imported_in_one_checked_module(tmp_path):
    """NNCF's internals change between releases; `check_nncf_internals()` only guards what its module uses."""
    files = {name: path for name, path in _modules().items() if name != NNCF_INTERNALS}
    files.update({f"recipes/{p.name}": p for p in (ROOT.parent / "recipes").glob("*.py")})
    outside = {name: found for name, path in files.items() if (found := _nncf_internal_imports(path))}
    assert not outside, f"NNCF internals imported outside {NNCF_INTERNALS}: {outside}"
    assert _nncf_internal_imports(_modules()[NNCF_INTERNALS])  # the scan sees them where they are
    probe = tmp_path / "probe.py"
    probe.write_text("import nncf\nimport nncf.torch\nfrom nncf import prune\nfrom nncf.torch.x import y\n")
    assert _nncf_internal_imports(probe) == ["nncf.torch", "nncf.torch.x"]


METHOD_REGISTRY = "sqft_ov.adapters.methods"  # the one module that may tell adapter methods apart by name


def _is_method(node: ast.AST) -> bool:
    """`method`, `x.method` or `x["method"]`: an adapter method's name."""
    if isinstance(node, ast.Name):
        return node.id == "method"
    if isinstance(node, ast.Attribute):
        return node.attr == "method"
    return isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value == "method"


def _names_a_method(node: ast.AST) -> bool:
    """A literal adapter method name ("lora", ...), alone or in a tuple / list / set."""
    from sqft_ov.adapters.methods import METHODS

    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value in METHODS
    return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(map(_names_a_method, node.elts))


def _method_branches(path: Path) -> list[str]:
    """Comparisons (and `match` cases) of a method name to an adapter method's literal name in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(map(_is_method, operands)) and any(map(_names_a_method, operands)):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Match) and _is_method(node.subject):
            values = [p.value for c in node.cases for p in ast.walk(c.pattern) if isinstance(p, ast.MatchValue)]
            if any(map(_names_a_method, values)):
                found.append(f"line {node.lineno}: match {ast.unparse(node.subject)}")
    return found


def test_adapter_methods_are_told_apart_only_in_the_registry(tmp_path):
    """What differs between LoRA, SparsePEFT and QA-SparsePEFT lives in their classes in adapters/methods.py;
    elsewhere code calls the method object, so adding a method is one class and one registry entry."""
    modules = _modules()
    outside = {name: found for name, path in modules.items() if name != METHOD_REGISTRY
               and (found := _method_branches(path))}
    assert not outside, f"adapter-method branches outside {METHOD_REGISTRY} (call the method object): {outside}"
    probe = tmp_path / "probe.py"
    probe.write_text('if config.method == "sparsepeft":\n    pass\nx = method != "lora"\n'
                     'y = record["method"] in ("lora", "qa-sparsepeft")\nz = config.method == "wanda"\n'
                     'w = r.method != "none"\nv = mode == "lora"\nmatch adapted.method:\n    case "qa-sparsepeft":\n'
                     '        pass\n')
    assert sorted(int(f.split(":")[0].removeprefix("line ")) for f in _method_branches(probe)) == [1, 3, 4, 8]


UI_LIBRARIES = ("rich", "typer")  # presentation: the CLI draws, the library returns results and calls on_progress
UI_PACKAGE = "sqft_ov.cli"


def _ui_imports(path: Path) -> list[str]:
    """`import rich...` / `from typer... import x` anywhere in a file (inside functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in UI_LIBRARIES]
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] in UI_LIBRARIES:
            found.append(node.module)
    return found


def test_rich_and_typer_are_imported_only_in_the_cli(tmp_path):
    """The library (stages, measure, quickstart, recipes) reports through return values and on_progress."""
    modules = _modules()
    files = {name: path for name, path in modules.items() if name != UI_PACKAGE and not name.startswith(UI_PACKAGE + ".")}
    files.update({f"recipes/{p.name}": p for p in (ROOT.parent / "recipes").glob("*.py")})
    outside = {name: found for name, path in files.items() if (found := _ui_imports(path))}
    assert not outside, f"rich / typer imported outside {UI_PACKAGE}: {outside}"
    assert _ui_imports(modules["sqft_ov.cli.tables"]) and _ui_imports(modules["sqft_ov.cli.app"])  # the scan sees them
    probe = tmp_path / "probe.py"
    probe.write_text("import os\nimport rich\nfrom rich.table import Table\n\n\ndef f():\n    import typer.core\n"
                     "    from typer import Option\n    from richer import x\n")
    assert _ui_imports(probe) == ["rich", "rich.table", "typer.core", "typer"]


LAYERS = {"sqft_ov.errors": 0, "sqft_ov.config_fields": 0, "sqft_ov.io": 1, "sqft_ov.adapters": 2, "sqft_ov.stages": 3, "sqft_ov.measure": 4,
          "sqft_ov.quickstart": 5, "sqft_ov.recipe": 5, "sqft_ov.cli": 6}  # imports go to the same or a lower layer


def _layer(module: str) -> int | None:
    return next((level for prefix, level in LAYERS.items() if module == prefix or module.startswith(prefix + ".")), None)


def test_layers_import_only_downward():
    modules = _modules()
    upward = []
    for name, path in modules.items():
        for imported in _imports(name, path, modules):
            if None not in (_layer(name), _layer(imported)) and _layer(imported) > _layer(name):
                upward.append(f"{name} -> {imported}")
    assert not upward, upward


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages([str(ROOT)], "sqft_ov.") if not m.name.endswith("__main__")]
    assert len(names) > 30
    for name in names:
        importlib.import_module(name)


def test_no_import_cycle_among_sqft_ov_modules():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert sum(map(len, graph.values())) > 50  # the scan sees the imports
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_detector_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_modules_and_functions_are_short():
    too_long = []
    for name, path in _modules().items():
        source = path.read_text()
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and LONG_REASON not in (ast.get_docstring(node) or ""):
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert not too_long, too_long


def test_public_api_lists_one_verb_per_stage():
    proc = subprocess.run([sys.executable, "-c", "import sys, sqft_ov; print(sqft_ov.__all__); "
                           "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'openvino')))"],
                          capture_output=True, text=True, check=True)
    listed, heavy = proc.stdout.splitlines()
    for verb in ("sparsify", "finetune", "search", "merge", "export", "evaluate", "bench", "tune"):
        assert f"'{verb}'" in listed
    assert heavy == "[]"  # `import sqft_ov` loads neither torch nor OpenVINO
    for name in sqft_ov.__all__:
        assert getattr(sqft_ov, name) is not None
    assert callable(sqft_ov.sparsify) and callable(sqft_ov.bench) and callable(sqft_ov.tune)
    with pytest.raises(AttributeError):
        sqft_ov.no_such_verb  # noqa: B018


def test_public_verbs_are_functions_even_after_their_modules_load():
    import sqft_ov.stages.merge  # noqa: F401  (the module loaded first must not shadow the verb)
    from sqft_ov import export, merge

    assert callable(merge) and callable(export) and not hasattr(merge, "__path__")


def readme_python_example() -> str:
    text = (ROOT.parent / "README.md").read_text()
    match = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md has no <!-- api-example --> python block"
    return match.group(1)


@pytest.mark.slow
def test_readme_python_example_runs_verbatim(tmp_path, monkeypatch):
    code = readme_python_example()
    assert len(code.strip().splitlines()) <= 16
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md:api-example", "exec"), namespace)
    out = tmp_path / "example"
    assert (out / "ir" / "openvino_model.xml").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["base", "ir", "task"]  # model to IR: no folder in between
    assert namespace["report"].settings["trained_int4_grid"]
    assert namespace["report"].zeros_kept == namespace["report"].source_zeros > 0
    assert namespace["result"].examples > 0
