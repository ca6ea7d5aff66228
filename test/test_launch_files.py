"""The launch files need a full ROS 2 install (launch_ros is not on PyPI), so they are checked by reading:
they name only executables setup.py installs and parameter files that exist, and every key in those
files is a parameter the named node declares."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = ("robot.launch.py", "sim.launch.py")


def console_scripts() -> dict[str, str]:
    """name -> module:function from setup.py's entry_points, read without running setup()."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "entry_points":
            entries = ast.literal_eval(node.value)["console_scripts"]
            return dict(tuple(part.strip() for part in entry.split("=")) for entry in entries)
    raise AssertionError("setup.py has no entry_points")


def launched_nodes(path: Path) -> list[dict]:
    """Keyword arguments of every Node(...) call, with the .yaml names passed to config(...)."""
    nodes = []
    for call in ast.walk(ast.parse(path.read_text())):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Node":
            kwargs = {k.arg: k.value for k in call.keywords}
            yamls = [n.value for n in ast.walk(kwargs["parameters"]) if isinstance(n, ast.Constant)
                     and isinstance(n.value, str) and n.value.endswith(".yaml")]
            nodes.append({"package": ast.literal_eval(kwargs["package"]), "executable": ast.literal_eval(kwargs["executable"]),
                          "name": ast.literal_eval(kwargs["name"]), "yamls": yamls})
    return nodes


def declared_parameters(module: str) -> set[str]:
    """First string argument of every `p(...)` / `declare(self, ...)` call in a node module."""
    source = ROOT / "src" / (module.replace(".", "/") + ".py")
    names = set()
    for call in ast.walk(ast.parse(source.read_text())):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) in ("p", "declare"):
            args = [a for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if args:
                names.add(args[0].value)
    return names


@pytest.mark.parametrize("launch_file", LAUNCH_FILES)
def test_launch_file_names_installed_executables_and_existing_configs(launch_file):
    path = ROOT / "launch" / launch_file
    compile(path.read_text(), str(path), "exec")
    scripts = console_scripts()
    nodes = launched_nodes(path)
    assert nodes, f"{launch_file} launches nothing"
    for node in nodes:
        assert node["package"] == "mambavla"
        assert node["executable"] in scripts, f"{node['executable']} is not a console script in setup.py"
        assert node["yamls"], f"{node['name']} gets no parameter file"
        for name in node["yamls"]:
            config = ROOT / "config" / name
            assert config.is_file(), f"{launch_file} names config/{name}, which does not exist"


@pytest.mark.parametrize("launch_file", LAUNCH_FILES)
def test_parameter_files_only_set_parameters_the_nodes_declare(launch_file):
    scripts = console_scripts()
    for node in launched_nodes(ROOT / "launch" / launch_file):
        declared = declared_parameters(scripts[node["executable"]].split(":")[0])
        assert len(declared) > 5
        for name in node["yamls"]:
            sections = yaml.safe_load((ROOT / "config" / name).read_text())
            assert node["name"] in sections, f"config/{name} has no section for {node['name']}"
            unknown = set(sections[node["name"]]["ros__parameters"]) - declared
            assert not unknown, f"config/{name} sets undeclared parameters of {node['name']}: {sorted(unknown)}"


def test_launch_files_are_installed_by_setup_py():
    text = (ROOT / "setup.py").read_text()
    assert 'glob("launch/*.launch.py")' in text and 'glob("config/*.yaml")' in text
    for launch_file in LAUNCH_FILES:
        assert (ROOT / "launch" / launch_file).is_file()
