"""mambavla: a Mamba vision-language-action policy with a flow-matching head, run as ROS 2 nodes."""

__version__ = "0.1.0"
