"""The package's layer contract (pyproject.toml, [tool.importlinter]) over every import statement,
function-level and TYPE_CHECKING ones included, and no import circle among modules."""

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "robot_rl"


def contract_layers() -> list[list[str]]:
    """The contract's layers, highest first, each a list of sibling packages (full names)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    (container,) = contract["containers"]
    return [[f"{container}.{name.strip()}" for name in layer.split("|")] for layer in contract["layers"]]


def module_files() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(module: str, path: Path, modules: dict) -> set[str]:
    """The package's modules that `module` imports anywhere in its file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()

    def add(name: str) -> None:
        while name and name not in modules:  # an imported name (a class) resolves to its module
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "robot_rl":
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] == "robot_rl":
                for alias in node.names:
                    add(f"{source}.{alias.name}")
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def place(module: str, layers: list[list[str]]) -> tuple[int, int] | None:
    """(layer index from the top, sibling index) of a module; None for the package's own __init__."""
    for i, layer in enumerate(layers):
        for j, package in enumerate(layer):
            if module == package or module.startswith(package + "."):
                return i, j
    return None


def violations(graph: dict[str, set[str]], layers: list[list[str]]) -> list[str]:
    found = []
    for module, targets in sorted(graph.items()):
        here = place(module, layers)
        if here is None:
            if module != "robot_rl":
                found.append(f"{module} is in no layer")
            continue
        for target in sorted(targets):
            there = place(target, layers)
            if there is None:
                continue
            if there[0] < here[0]:
                found.append(f"{module} imports {target}, a higher layer")
            elif there[0] == here[0] and there[1] != here[1]:
                found.append(f"{module} imports {target}, an independent sibling")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), iteratively."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_import_follows_the_layers():
    layers = contract_layers()
    assert len(layers) >= 5 and any(len(layer) > 1 for layer in layers)
    graph = import_graph()
    assert len(graph) > 100 and sum(map(len, graph.values())) > 300  # the walk found the package
    assert violations(graph, layers) == []


def test_no_import_circle_among_modules():
    assert cycles(import_graph()) == []


def test_the_checks_catch_what_they_look_for(tmp_path):
    layers = contract_layers()
    # an import from the core up into the sim, one across the two sides, and a circle
    graph = {
        "robot_rl.core.env": {"robot_rl.sim.reach"},
        "robot_rl.learners.iql": {"robot_rl.sim.vector"},
        "robot_rl.sim.reach": {"robot_rl.core.env"},
    }
    assert violations(graph, layers) == [
        "robot_rl.core.env imports robot_rl.sim.reach, a higher layer",
        "robot_rl.learners.iql imports robot_rl.sim.vector, an independent sibling",
    ]
    assert cycles(graph) == [["robot_rl.core.env", "robot_rl.sim.reach"]]
    # imports inside functions and by full name are found, and a class resolves to its module
    probe = tmp_path / "env.py"
    probe.write_text(
        "def f():\n    from robot_rl.sim.reach import ReachTask\n    import robot_rl.utils.dist\n"
    )
    modules = {"robot_rl.core.env": probe, "robot_rl.sim.reach": None, "robot_rl.utils.dist": None}
    assert imports_of("robot_rl.core.env", probe, modules) == {"robot_rl.sim.reach", "robot_rl.utils.dist"}


def test_import_linter_keeps_the_contract():
    linter = Path(sys.executable).with_name("lint-imports")
    if not linter.exists():
        pytest.skip("import-linter (the dev extra) is not installed")
    result = subprocess.run([str(linter)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
