from glob import glob

from setuptools import find_packages, setup

package_name = "mambavla"

setup(
    name=package_name,
    version="0.1.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.xml")),
        ("bin", ["bin/mambavla"]),  # the CLI on PATH after `source install/setup.bash` (scripts go to lib/mambavla)
    ],
    package_data={"mambavla": ["py.typed", "policies/*/*"]},  # the shipped policy travels with the code
    install_requires=["setuptools"],
    # the ONNX Runtime backend (PolicyRuntime(backend="onnx"), `mambavla export --onnx`); make setup installs
    # the CPU build pinned in requirements.lock, a GPU robot PC takes onnxruntime-gpu for the CUDA provider
    extras_require={"onnx": ["onnx", "onnxruntime"], "onnx-gpu": ["onnx", "onnxruntime-gpu"]},
    zip_safe=False,
    maintainer="mambavla",
    maintainer_email="maintainers@mambavla.dev",
    description="Mamba vision-language-action policy with a flow-matching head, as ROS 2 nodes for Franka arms.",
    license="Apache-2.0",
    entry_points={
        # the nodes start through a light module that takes SIGINT/SIGTERM while the node's imports load
        "console_scripts": [
            "mambavla = mambavla.cli:main",
            "policy_node = mambavla.ros.entry:policy_node",
            "controller_node = mambavla.ros.entry:controller_node",
            "sim_node = mambavla.ros.entry:sim_node",
            "recorder_node = mambavla.ros.entry:recorder_node",
        ],
    },
)
