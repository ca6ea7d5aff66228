"""runtime/'s import structure: no circle among its modules (lazy imports counted), each module imports on its
own, and nothing in it reaches up to the nodes, the commands, training or the simulator."""

import ast
import subprocess
import sys
from pathlib import Path

import mambavla.runtime

ROOT = Path(mambavla.runtime.__file__).parent
SRC = ROOT.parent.parent
PACKAGE = "mambavla.runtime"
UPWARD = ("mambavla.ros", "mambavla.commands", "mambavla.cli", "mambavla.train", "mambavla.sim",
          "mambavla.evaluation", "rclpy")


def runtime_modules(src: Path = SRC) -> dict[str, Path]:
    """Dotted name -> file of every module in the runtime package under `src`."""
    modules = {}
    for path in sorted((src / PACKAGE.replace(".", "/")).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(path: Path) -> set[str]:
    """Every module an import statement in `path` names, at any depth (function-level imports too); for
    `from a import b`, a.b as well as a (b may be a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the runtime modules it imports."""
    return {name: {n for n in imported_names(path) if n in modules and n != name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path that ends where it starts, or None."""
    state: dict[str, str] = {}  # "open" while on the DFS path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_runtime_modules_import_each_other_without_a_circle():
    modules = runtime_modules()
    assert {f"{PACKAGE}.policy_runtime", f"{PACKAGE}.stream_batch", f"{PACKAGE}.onnx_step",
            f"{PACKAGE}.backends", f"{PACKAGE}.backends.eager"} <= set(modules)
    graph = import_graph(modules)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    # the layering it has: the runtime over the backends over their parts; the batch on the backends' interface
    assert f"{PACKAGE}.backends" in graph[f"{PACKAGE}.policy_runtime"]
    assert f"{PACKAGE}.policy_runtime" not in graph[f"{PACKAGE}.stream_batch"]
    assert not {n for n in graph[f"{PACKAGE}.backends.onnx"] if n.startswith(f"{PACKAGE}.policy_runtime")}


def test_the_circle_finder_finds_a_lazy_import_circle(tmp_path):
    package = tmp_path / "mambavla" / "runtime"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from mambavla.runtime.b import B\n")
    (package / "b.py").write_text("def B():\n    from mambavla.runtime import a\n")
    (package / "c.py").write_text("from mambavla.runtime import a\n")
    graph = import_graph(runtime_modules(tmp_path))
    assert find_cycle(graph) == ["mambavla.runtime.a", "mambavla.runtime.b", "mambavla.runtime.a"]


def test_every_runtime_module_imports_on_its_own():
    # one interpreter; before each module, every runtime module already imported is forgotten, so each is
    # imported first, as a caller that needs only it would (torch and the model stay loaded: faster)
    script = (
        "import importlib, sys\n"
        "failed = []\n"
        f"for name in {sorted(runtime_modules())!r}:\n"
        f"    for loaded in [m for m in sys.modules if m == {PACKAGE!r} or m.startswith({PACKAGE + '.'!r})]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as err:\n"
        "        failed.append(f'{name}: {type(err).__name__}: {err}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]


def test_runtime_imports_nothing_above_it():
    upward = {name: sorted(n for n in imported_names(path) if n.startswith(UPWARD))
              for name, path in runtime_modules().items()}
    assert {name: found for name, found in upward.items() if found} == {}
