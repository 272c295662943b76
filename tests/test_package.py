"""``import fcnseg`` stays light: public names load their modules on first use."""

import ast
import itertools
import subprocess
import sys
from pathlib import Path

import pytest

import fcnseg


def modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    script = f"import sys\n{code}\nprint('\\n'.join(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    return set(done.stdout.split())


def test_import_loads_neither_the_trainer_nor_protobuf():
    loaded = modules_after("import fcnseg")
    assert "fcnseg.train.trainer" not in loaded
    assert not any(name.startswith("google.protobuf") for name in loaded)
    assert "torch" not in loaded


def test_loading_a_checkpoint_and_configuring_a_run_need_neither():
    loaded = modules_after("import fcnseg\nfcnseg.load, fcnseg.TrainConfig, fcnseg.predict, fcnseg.scores")
    assert "fcnseg.train.config" in loaded and "fcnseg.weights.load" in loaded
    assert "fcnseg.train.trainer" not in loaded
    assert not any(name.startswith("google.protobuf") for name in loaded)


def test_evaluation_and_inference_import_nothing_of_training():
    loaded = modules_after("import fcnseg.cli.evaluate, fcnseg.infer.export, fcnseg.infer.predict")
    assert "fcnseg.metrics.segmentation" in loaded
    assert not any(name.startswith(("fcnseg.train", "google.protobuf")) for name in loaded)
    assert "fcnseg.train.trainer" not in modules_after("import fcnseg.cli.predict")


@pytest.mark.parametrize("name", fcnseg.__all__)
def test_every_public_name_is_its_module_object(name):
    value = getattr(fcnseg, name)
    module = sys.modules[fcnseg._HOMES[name]]
    assert value is getattr(module, name)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'Trainer'"):
        fcnseg.Trainer  # noqa: B018
    assert set(fcnseg.__all__) <= set(dir(fcnseg))


SRC = Path(fcnseg.__file__).parent


def _unit(module: str) -> str:
    """The part of fcnseg a module belongs to: its subpackage (``models``) or top-level module
    (``download``); ``fcnseg`` for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imported(path: Path, module: str) -> set[str]:
    """The fcnseg modules a source file imports, at its top or inside functions (what an
    ``if TYPE_CHECKING:`` block imports only for annotations is left out)."""
    tree = ast.parse(path.read_text(), str(path))
    for_annotations = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for child in ast.walk(node)
    }
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in for_annotations:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".rstrip(".")
            if (
                node.module is None or base == "fcnseg"
            ):  # the names are modules: from fcnseg import distributed
                found.update(f"{base}.{alias.name}" for alias in node.names)
            else:
                found.add(base)
    return {name for name in found if name.split(".")[0] == "fcnseg"}


def import_graph() -> dict[str, dict[str, list[str]]]:
    """``{unit: {imported unit: [the imports that make the edge]}}`` over fcnseg's source files."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for name in _imported(path, module):
            if _unit(name) != _unit(module):
                graph.setdefault(_unit(module), {}).setdefault(_unit(name), []).append(f"{module} -> {name}")
    return graph


def find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """A path of units that comes back to its start, or None (depth-first search)."""
    done: set[str] = set()

    def visit(unit: str, path: list[str]) -> list[str] | None:
        if unit in path:
            return path[path.index(unit) :] + [unit]
        if unit in done:
            return None
        for target in graph.get(unit, {}):
            cycle = visit(target, [*path, unit])
            if cycle:
                return cycle
        done.add(unit)
        return None

    return next((cycle for unit in sorted(graph) if (cycle := visit(unit, []))), None)


def test_the_subpackages_import_each_other_without_a_cycle():
    graph = import_graph()
    assert {"models", "tasks", "train", "infer", "weights", "data", "cli", "serve"} <= set(graph)
    assert "train" in graph["cli"] and "tasks" in graph["train"] and "train" not in graph["tasks"]
    cycle = find_cycle(graph)
    edges = [line for a, b in itertools.pairwise(cycle) for line in graph[a][b]] if cycle else []
    assert cycle is None, " -> ".join(cycle) + ":\n" + "\n".join(edges)


def test_the_cycle_check_sees_imports_inside_functions_and_relative_ones(tmp_path):
    (tmp_path / "fcnseg" / "a").mkdir(parents=True)
    (tmp_path / "fcnseg" / "a" / "__init__.py").write_text("from . import x\n")
    (tmp_path / "fcnseg" / "a" / "x.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fcnseg.c import z\n"
        "def f():\n    from ..b.y import g\n"
    )
    assert _imported(tmp_path / "fcnseg" / "a" / "__init__.py", "fcnseg.a") == {"fcnseg.a.x"}
    assert _imported(tmp_path / "fcnseg" / "a" / "x.py", "fcnseg.a.x") == {"fcnseg.b.y"}
    assert find_cycle({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": []}, "b": {"c": []}, "d": {"a": []}}) is None
