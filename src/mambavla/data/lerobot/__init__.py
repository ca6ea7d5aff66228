"""LeRobotDataset v3 <-> episode bags, offline, with pyarrow (parquet) and PyAV (mp4).

    export_lerobot(["demos/"], "demos_lerobot/")            episode bags -> a LeRobotDataset v3 folder
    import_lerobot("crisp_pick/", "bags/", gripper="auto")  a LeRobotDataset v3 folder -> episode bags

`layout` holds LeRobot's v3.0 paths and statistics, `writer` the export, `reader` the import; docs/lerobot.md
is the user's page.
"""

from mambavla.data.lerobot.layout import LeRobotError, load_info
from mambavla.data.lerobot.reader import ACTION_TYPES, GRIPPER_CONVENTIONS, import_lerobot
from mambavla.data.lerobot.writer import CODECS, export_lerobot

__all__ = ["ACTION_TYPES", "CODECS", "GRIPPER_CONVENTIONS", "LeRobotError", "export_lerobot", "import_lerobot",
           "load_info"]
