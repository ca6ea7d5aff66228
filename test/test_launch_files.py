"""The launch files need a full ROS 2 install (launch_ros is not on PyPI), so they are checked by reading:
they name only executables setup.py installs and parameter files that exist, and every key in those
files is a parameter the named node declares."""

from __future__ import annotations

import ast
import importlib
import re
import sys
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


def node_module(executable: str) -> str:
    """The module a node's console script runs: the scripts start through mambavla.ros.entry, whose function
    of the same name imports mambavla.ros.<node>."""
    module, function = console_scripts()[executable].split(":")
    return f"mambavla.ros.{function}" if module == "mambavla.ros.entry" else module


def launched_nodes(path: Path) -> list[dict]:
    """Keyword arguments of every Node(...) call, with the .yaml names passed to config(...)."""
    nodes = []
    for call in ast.walk(ast.parse(path.read_text())):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Node":
            kwargs = {k.arg: k.value for k in call.keywords}
            yamls = [n.value for n in ast.walk(kwargs["parameters"]) if isinstance(n, ast.Constant)
                     and isinstance(n.value, str) and n.value.endswith(".yaml")]
            nodes.append({"package": ast.literal_eval(kwargs["package"]),
                          "executable": ast.literal_eval(kwargs["executable"]),
                          "name": ast.literal_eval(kwargs["name"]), "yamls": yamls})
    return nodes


def declared_parameters(module: str) -> set[str]:
    """First string argument of every `p(...)` / `declare(self, ...)` call in a node module, and the keys of
    its `PARAMETERS` table (names declared in a loop with their owners' defaults), and the names of the
    `parameters()` it imports (declared from a config dataclass)."""
    source = ROOT / "src" / (module.replace(".", "/") + ".py")
    names = set()
    for call in ast.walk(ast.parse(source.read_text())):
        if isinstance(call, ast.Assign) and any(getattr(t, "id", None) == "PARAMETERS" for t in call.targets):
            names.update(k.value for k in call.value.keys)
        if isinstance(call, ast.ImportFrom) and any(alias.name == "parameters" for alias in call.names):
            names.update(importlib.import_module(call.module).parameters())
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
    for node in launched_nodes(ROOT / "launch" / launch_file):
        declared = declared_parameters(node_module(node["executable"]))
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


def _function_from(path: Path, name: str):
    """One top-level function of a launch file, without importing `launch` (not on PyPI)."""
    tree = ast.parse(path.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    plain = [n for n in tree.body if isinstance(n, (ast.Import, ast.Assign))]  # stdlib imports, constants
    namespace: dict = {}
    exec(compile(ast.Module(body=plain + [fn], type_ignores=[]), str(path), "exec"), namespace)
    return namespace[name]


def test_sim_launch_gives_the_simulator_a_free_address_of_its_own_by_default():
    path = ROOT / "launch" / "sim.launch.py"
    text = path.read_text()
    assert re.search(r'DeclareLaunchArgument\(\s*"robot_ip",\s*default_value="auto"', text)
    free = _function_from(path, "free_loopback_address")
    addresses = {free() for _ in range(5)}
    assert all(a.startswith("127.") and a != "127.0.0.1" for a in addresses) and len(addresses) > 1
    import socket

    taken = socket.socket()
    taken.bind((addresses.pop(), 1337))  # a simulator already serving there
    try:
        assert taken.getsockname()[0] not in {free() for _ in range(20)}
    finally:
        taken.close()


@pytest.mark.parametrize(("launch_file", "required"), [("robot.launch.py", ("controller", "policy")),
                                                        ("sim.launch.py", ("sim", "controller", "policy"))])
def test_the_launch_shuts_down_when_a_required_node_exits(launch_file, required):
    tree = ast.parse((ROOT / "launch" / launch_file).read_text())
    calls = [c for c in ast.walk(tree) if isinstance(c, ast.Call)]
    handlers = [c for c in calls if getattr(c.func, "id", None) == "OnProcessExit"]
    emits_shutdown = any(getattr(c.func, "id", None) == "Shutdown" for c in calls)
    assert handlers and emits_shutdown
    text = (ROOT / "launch" / launch_file).read_text()
    for name in required:
        assert f"({name}, " in text or f"shutdown_when_it_exits({name}," in text, \
            f"{name} exiting does not end the launch"


def test_robot_launch_has_a_realtime_argument():
    text = (ROOT / "launch" / "robot.launch.py").read_text()
    assert 'DeclareLaunchArgument("realtime"' in text
    assert '"realtime": ParameterValue(LaunchConfiguration("realtime")' in text


def test_robot_launch_names_any_number_of_cameras_as_the_checkpoint_does():
    path = ROOT / "launch" / "robot.launch.py"
    camera_topics = _function_from(path, "camera_topics")
    # today's arguments: front and wrist, each topic from its <name>_camera argument
    assert camera_topics("front,wrist", {"front_camera": "/a/color/image_raw"}) == (
        ["front", "wrist"], ["/a/color/image_raw", "/cameras/wrist/image_raw"])
    assert camera_topics("top, front=/f/image_raw,wrist", {"wrist_camera": "/w/image_raw", "top_camera": "/t"}) == (
        ["top", "front", "wrist"], ["/t", "/f/image_raw", "/w/image_raw"])
    assert camera_topics("left", {}) == (["left"], ["/cameras/left/image_raw"])
    for bad, fix in (("front,front", "twice"), ("front,,wrist", "empty camera name"), ("=/a", "empty camera name")):
        with pytest.raises(ValueError, match=fix):
            camera_topics(bad, {})
    text = path.read_text()
    assert 'DeclareLaunchArgument("cameras", default_value=DEFAULT_CAMERAS' in text
    assert 'DEFAULT_CAMERAS = "front,wrist"' in text
    for name in ("front", "wrist"):  # kept, with the topics policy.yaml subscribes by default
        assert f'DeclareLaunchArgument("{name}_camera", default_value=DEFAULT_TOPIC.format(name="{name}")' in text
    shipped = yaml.safe_load((ROOT / "config" / "policy.yaml").read_text())["policy_node"]["ros__parameters"]
    assert camera_topics("front,wrist", {}) == (shipped["camera_names"], shipped["camera_topics"])
    calls = [c for c in ast.walk(ast.parse(text)) if isinstance(c, ast.Call) and getattr(c.func, "id", None) == "Node"]
    policy = next(c for c in calls
                  if ast.literal_eval({k.arg: k.value for k in c.keywords}["executable"]) == "policy_node")
    keys = {k.value for d in ast.walk(policy) if isinstance(d, ast.Dict) for k in d.keys if isinstance(k, ast.Constant)}
    assert {"camera_names", "camera_topics"} <= keys  # the policy node gets them as parameters


def test_robot_launch_refuses_an_empty_checkpoint():
    # policy_node runs an untrained preset (noise) without a checkpoint: never on the real arm
    path = ROOT / "launch" / "robot.launch.py"
    checkpoint_folder = _function_from(path, "checkpoint_folder")
    for empty in ("", "  "):
        with pytest.raises(ValueError, match="untrained preset"):
            checkpoint_folder(empty)
    assert checkpoint_folder("/ckpt/lift") == "/ckpt/lift"
    text = path.read_text()
    assert 'checkpoint = checkpoint_folder(LaunchConfiguration("checkpoint").perform(context))' in text
    assert '{"checkpoint": checkpoint,' in text  # the policy gets the checked value


def test_robot_launch_params_file_applies_over_the_shipped_yaml_for_both_nodes(tmp_path):
    path = ROOT / "launch" / "robot.launch.py"
    parameter_files = _function_from(path, "parameter_files")
    assert parameter_files("") == []
    cell = tmp_path / "cell.yaml"
    cell.write_text("controller_node:\n  ros__parameters:\n    workspace_min: [0.3, -0.3, 0.05]\n")
    assert parameter_files(str(cell)) == [str(cell)]
    with pytest.raises(FileNotFoundError, match="controller_node: and/or policy_node: sections"):
        parameter_files(str(tmp_path / "missing.yaml"))
    tree = ast.parse(path.read_text())
    assert any(isinstance(c, ast.Call) and getattr(c.func, "id", None) == "DeclareLaunchArgument"
               and c.args and ast.literal_eval(c.args[0]) == "params_file" for c in ast.walk(tree))
    nodes = [c for c in ast.walk(tree) if isinstance(c, ast.Call) and getattr(c.func, "id", None) == "Node"]
    assert len(nodes) == 2
    for node in nodes:
        parameters = dict((k.arg, k.value) for k in node.keywords)["parameters"].elts
        kinds = [type(p).__name__ for p in parameters]
        # shipped YAML, then the user's file, then the launch arguments: later entries override earlier ones
        assert kinds == ["Call", "Starred", "Dict"], kinds
        assert getattr(parameters[1].value, "id", None) == "user"


def test_config_path_finds_config_in_a_colcon_install_space(tmp_path, monkeypatch):
    import importlib.util
    import shutil

    site = tmp_path / "install" / "mambavla" / "lib" / "python3.11" / "site-packages" / "mambavla" / "control"
    site.mkdir(parents=True)
    shutil.copy(ROOT / "src" / "mambavla" / "control" / "config.py", site / "config.py")
    share = tmp_path / "install" / "mambavla" / "share" / "mambavla" / "config"
    share.mkdir(parents=True)
    (share / "only_installed.yaml").write_text("x: 1\n")
    spec = importlib.util.spec_from_file_location("installed_config", site / "config.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    assert module.config_path("only_installed.yaml") == share / "only_installed.yaml"


def test_the_cli_is_on_path_in_an_install_space(tmp_path):
    import subprocess

    assert '("bin", ["bin/mambavla"])' in (ROOT / "setup.py").read_text()
    prefix = tmp_path / "install" / "mambavla"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "lib" / "mambavla").mkdir(parents=True)
    wrapper = prefix / "bin" / "mambavla"
    wrapper.write_bytes((ROOT / "bin" / "mambavla").read_bytes())
    wrapper.chmod(0o755)
    script = prefix / "lib" / "mambavla" / "mambavla"  # what ament_python installs, with the right interpreter
    script.write_text('#!/bin/sh\necho "console script: $*"\n')
    script.chmod(0o755)
    out = subprocess.run(["sh", "-c", "mambavla instruct hello"], env={"PATH": f"{prefix / 'bin'}:/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=10)
    assert out.stdout.strip() == "console script: instruct hello", out.stderr


def test_the_cell_parameter_file_in_docs_sets_only_parameters_the_nodes_declare():
    """docs/robot.md's params_file example: a user copying it gets no 'undeclared parameter' surprise."""
    text = (ROOT / "docs" / "robot.md").read_text()
    block = next(b for b in text.split("```yaml\n")[1:] if b.startswith("# my_cell.yaml")).split("```")[0]
    sections = yaml.safe_load(block)
    assert set(sections) == {"controller_node", "policy_node"}
    assert "workspace_min" in sections["controller_node"]["ros__parameters"]
    for node, section in sections.items():
        declared = declared_parameters(node_module(node))
        unknown = set(section["ros__parameters"]) - declared
        assert not unknown, f"docs/robot.md's my_cell.yaml sets undeclared parameters of {node}: {sorted(unknown)}"
