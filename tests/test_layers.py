"""The package's data flow is one way: no module imports from a layer above its own."""
import ast
from pathlib import Path

import squeezenet

ROOT = Path(squeezenet.__file__).parent
# models, data -> weights -> reader (the file without torch), training -> compression (retraining
# runs the training loop) -> export (runtimes) -> evaluation (which runs any engine) -> exploration -> cli
TIER = {"errors": 0, "cpu": 0, "utils": 0, "memory": 0, "metrics": 0, "preprocessing": 0, "download": 0,
        "models": 1, "data": 1, "weights": 2, "reader": 3, "training": 3, "compression": 4,
        "export": 5, "evaluation": 6, "exploration": 7, "demo": 8, "cli": 8, "__main__": 9, "__init__": 9}
# Same-tier units that may not import each other at all.
PEERS = {("models", "data"), ("data", "models"), ("demo", "cli")}


def _unit(module_path: Path) -> str:
    rel = module_path.relative_to(ROOT).parts
    return rel[0].removesuffix(".py")


def _imports(path: Path):
    """Units of the package that ``path`` imports (top level or inside functions)."""
    tree = ast.parse(path.read_text())
    pkg = path.relative_to(ROOT).parent.parts
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(pkg[:len(pkg) - (node.level - 1)])
            target = base + (node.module.split(".") if node.module else [])
            if target:
                yield target[0], node.lineno
            else:  # "from . import x" at the package root
                for alias in node.names:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("squeezenet."):
            yield node.module.split(".")[1], node.lineno


def test_no_module_imports_from_a_layer_above():
    bad = []
    for path in ROOT.rglob("*.py"):
        unit = _unit(path)
        if path.name == "__init__.py" and path.parent == ROOT:
            continue
        for target, line in _imports(path):
            if target == unit or target not in TIER:
                continue
            if TIER[target] > TIER[unit] or (unit, target) in PEERS:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({unit}) imports {target}")
    assert not bad, "imports against the data flow:\n" + "\n".join(bad)


def test_every_unit_has_a_tier():
    units = {_unit(p) for p in ROOT.rglob("*.py")}
    assert units <= set(TIER), sorted(units - set(TIER))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_graph() -> dict[str, set[str]]:
    """Module -> package modules it imports, at module level or inside functions. ``from pkg
    import name`` depends on ``pkg.name`` where that is a module, else on ``pkg``."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {m: set() for m in modules}
    for name, path in modules.items():
        pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(pkg[:len(pkg) - node.level + 1] + (node.module.split(".") if node.module else [])) \
                    if node.level else node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                while t not in modules and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in modules and t != name:
                    graph[name].add(t)
    return graph


def test_no_import_cycles_between_modules():
    graph = _module_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(m, path):
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
