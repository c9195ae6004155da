"""The code's shape (issue 10): no import cycle, no room importing a higher one, no private name
imported across modules, and no function body over 60 lines without a reason in a comment."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Rooms from the top floor down (see CONTRIBUTING.md): a module may import its own room and lower ones.
ROOMS = (
    ("resnet_cifar.cli",),
    ("resnet_cifar.tuning",),
    ("resnet_cifar.inference", "resnet_cifar.export", "resnet_cifar.report"),
    ("resnet_cifar.engine",),
    ("resnet_cifar.evaluation",),
    ("resnet_cifar.data",),
    ("resnet_cifar.models",),
    ("resnet_cifar.distributed",),
    ("resnet_cifar.config",),
    # The registries of named choices: plain data that the config checks names against and the
    # rooms above implement, so they sit below the config; they import no other project module.
    ("resnet_cifar.choices",),
    ("resnet_cifar.files", "resnet_cifar.errors"),
)
LONG_BODY = 60
LONG_REASON = "# Long on purpose:"


def _modules() -> dict[str, Path]:
    found = {}
    for path in [*REPO.glob("resnet_cifar/**/*.py"), *REPO.glob("cli/*.py")]:
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[0] == "cli":
            parts = ["resnet_cifar", *parts]  # cli/ installs as resnet_cifar.cli
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every project import in ``path``."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    result = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("resnet_cifar"):
                result.append((target, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            result.extend((alias.name, []) for alias in node.names if alias.name.startswith("resnet_cifar"))
    return result


def _room(module: str) -> int | None:
    for rank, prefixes in enumerate(ROOMS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return rank
    return None  # the package itself (resnet_cifar/__init__.py re-exports the models)


def test_every_module_belongs_to_a_room() -> None:
    assert [name for name in MODULES if _room(name) is None] == ["resnet_cifar"]


def test_no_room_imports_a_higher_one() -> None:
    wrong = []
    for name, path in MODULES.items():
        rank = _room(name)
        for target, _ in _imports(name, path):
            target_rank = _room(target)
            if rank is not None and target_rank is not None and target_rank < rank:
                wrong.append(f"{name} imports {target}")
    assert wrong == []


def test_no_import_cycle_between_modules() -> None:
    graph = {name: {t for t, _ in _imports(name, path) if t in MODULES and t != name} for name, path in MODULES.items()}
    # A package's __init__ re-exporting its own submodules is not a cycle of the code's design.
    for name in graph:
        graph[name] = {t for t in graph[name] if not (name.startswith(t + ".") and t in graph)}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*stack[stack.index(target):], target]))
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_no_private_name_is_imported_across_modules() -> None:
    private = [
        f"{name} imports {target}.{imported}"
        for name, path in MODULES.items()
        for target, names in _imports(name, path)
        for imported in names
        if imported.startswith("_") and not imported.startswith("__")
    ]
    assert private == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_function_body_over_60_lines_without_a_reason(name: str) -> None:
    source = MODULES[name].read_text()
    lines = source.splitlines()
    long = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body[1:] if ast.get_docstring(node) and len(node.body) > 1 else node.body
            span = lines[body[0].lineno - 1 : node.end_lineno]
            whole = lines[node.lineno - 1 : node.end_lineno]  # the reason may precede the first statement
            if len(span) > LONG_BODY and not any(line.strip().startswith(LONG_REASON) for line in whole):
                long.append(f"{node.name} ({len(span)} lines)")
    assert long == []


def test_no_file_holds_a_merge_conflict_marker() -> None:
    tracked = [
        path
        for pattern in ("*.py", "*.md", "*.toml", "*.sh", ".ci/run")
        for path in REPO.rglob(pattern)
        if ".venv" not in path.parts and ".git" not in path.parts
    ]
    marked = [
        str(path.relative_to(REPO))
        for path in tracked
        if any(line.startswith(("<<<<<<< ", ">>>>>>> ")) for line in path.read_text(errors="replace").splitlines())
    ]
    assert tracked and marked == []
