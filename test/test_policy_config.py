"""policy_node's parameters declared once (PolicyNodeConfig): the shipped parameter files state exactly those,
a misspelt name is refused with the one meant, and the schedule they give is the one replay runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mambavla.runtime.policy_config import PolicyNodeConfig, check_names, parameters
from mambavla.runtime.schedule import ScheduleConfig

CONFIG = Path(__file__).resolve().parents[1] / "config"


def shipped(name: str) -> dict:
    return yaml.safe_load((CONFIG / name).read_text())["policy_node"]["ros__parameters"]


def test_policy_yaml_states_every_declared_parameter_with_its_default():
    declared = parameters()
    robot = shipped("policy.yaml")
    assert list(robot) == list(declared)
    assert {k: v for k, v in robot.items()} == {k: default for k, (default, _) in declared.items()}
    assert robot["device"] == "cuda" and robot["infer_mode"] == "period"


def test_the_simulation_overrides_are_declared_parameters_and_make_a_valid_config():
    overrides = shipped("policy_sim.yaml")
    check_names(overrides, "policy_sim.yaml")
    config = PolicyNodeConfig.from_params({**shipped("policy.yaml"), **overrides})
    assert (config.device, config.backend, config.torch_threads, config.max_observation_age) == ("cpu", "onnx", 1, 1.0)


def test_a_misspelt_parameter_is_refused_naming_the_one_meant():
    with pytest.raises(ValueError, match=r"my.yaml: 'devise' \(did you mean 'device'\?\) is not a policy_node "
                                         r"parameter; its parameters are checkpoint, preset, device"):
        PolicyNodeConfig.from_params({**shipped("policy.yaml"), "devise": "cpu"}, "my.yaml")


@pytest.mark.parametrize("name, value, fix", [
    ("infer_mode", "often", "infer_mode must be one of"),
    ("infer_rate_hz", 0.0, "infer_rate_hz must be > 0"),
    ("dtype", "fp64", "dtype must be one of"),
    ("max_frame_future", -0.1, "max_frame_future must be >= 0"),
    ("camera_names", ["front"], "must name each of camera_topics"),
    ("camera_topics", ["/a/compressed", "/b"], "name the base topic"),
])
def test_bad_values_are_refused_with_the_fix(name, value, fix):
    with pytest.raises(ValueError, match=fix):
        PolicyNodeConfig.from_params({name: value})


def test_the_parameters_give_the_schedule_replay_runs():
    config = PolicyNodeConfig.from_params({"infer_mode": "rate", "infer_rate_hz": 4.0, "max_observation_age": 0.7})
    assert config.schedule_config(2, 0.2, 0.8) == ScheduleConfig(
        n_cameras=2, policy_period=0.2, chunk_duration=0.8, infer_mode="rate", consume_fraction=0.5,
        infer_period=0.25, max_observation_age=0.7)


def test_the_schedule_and_the_parameters_import_neither_control_nor_ros():
    code = ("import sys, mambavla.runtime.schedule, mambavla.runtime.policy_config; "
            "print(sorted(m for m in sys.modules if m.startswith(('mambavla.control', 'rclpy', 'torch'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_the_cli_dtype_options_parse_without_torch():
    code = ("import argparse, sys\n"
            "from mambavla.commands import bench_ros, eval_sim\n"
            "p = argparse.ArgumentParser(); s = p.add_subparsers(); bench_ros.register(s); eval_sim.register(s)\n"
            "assert p.parse_args(['bench-ros']).dtype == 'auto'\n"
            "assert p.parse_args(['eval-sim', '--preset', 'tiny']).dtype == 'fp32'\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
