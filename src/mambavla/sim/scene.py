"""The workcell's MJCF, added to franky-sim's FR3 scene before the simulator starts: a table whose top
is z = 0 (the robot base sits on it), red/green/blue cubes on free joints, coloured plates (mocap
bodies, so a reset moves them through `MjData`), lights, a `tcp` site matching franky's end-effector
frame, and the cameras.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from franky_sim.mujoco_simulator import MujocoSimulator

from mambavla.sim.config import COLOURS, CUBE_COLOURS, PLATE_COLOURS, WorkcellConfig

ROBOT_PREFIX = "robot0_"
# franky's end-effector (TCP) frame: 0.1034 m along the hand's z axis (franky-sim RobotParameters).
TCP_OFFSET = 0.1034


def _fmt(values) -> str:
    return " ".join(f"{float(v):.6g}" for v in values)


def _find_body(root: ET.Element, name: str) -> ET.Element:
    for body in root.iter("body"):
        if body.get("name") == name:
            return body
    raise ValueError(f"body {name!r} not in the franky-sim scene")


def build_scene(sim: MujocoSimulator, config: WorkcellConfig) -> None:
    """Extend an initialised, not yet started franky-sim MuJoCo simulator that has one robot."""
    scene, world = sim.scene, sim.worldbody
    quality = scene.find("visual/quality")
    quality.set("offsamples", "4" if config.shadows else "0")
    for light in world.findall("light"):
        light.set("castshadow", "true" if config.shadows and light.get("name") == "key_light" else "false")
    height, width = config.camera_size
    ET.SubElement(scene.find("visual"), "global", offwidth=str(max(640, width)), offheight=str(max(480, height)))

    for geom in world.findall("geom"):
        if geom.get("name") == "ground":
            geom.set("pos", "0 0 -0.75")
    asset = scene.find("asset")
    ET.SubElement(asset, "material", name="table_top", rgba=_fmt(config.table_rgba), specular="0.1")
    tx, ty = config.table_size
    ET.SubElement(world, "geom", name="table", type="box", material="table_top",
                  pos=_fmt((config.table_center_x, 0.0, -0.025)), size=_fmt((tx / 2, ty / 2, 0.025)))
    for i, (lx, ly) in enumerate(((0.1, 0.5), (0.1, -0.5), (0.9, 0.5), (0.9, -0.5))):
        ET.SubElement(world, "geom", name=f"table_leg{i}", type="box", rgba="0.3 0.3 0.3 1",
                      pos=_fmt((lx, ly, -0.4)), size="0.03 0.03 0.35", contype="0", conaffinity="0")
    ET.SubElement(world, "light", name="top_light", pos="0.5 0 1.6", dir="0 0 -1", diffuse=_fmt(config.top_light),
                  specular="0 0 0", castshadow="false")

    h = config.cube_half
    for i, colour in enumerate(CUBE_COLOURS):
        body = ET.SubElement(world, "body", name=f"cube_{colour}", pos=_fmt((0.5, -0.2 + 0.2 * i, h)))
        ET.SubElement(body, "freejoint", name=f"cube_{colour}")
        ET.SubElement(body, "geom", name=f"cube_{colour}", type="box", size=_fmt((h, h, h)),
                      rgba=_fmt((*COLOURS[colour], 1.0)), mass=_fmt((config.cube_mass,)),
                      friction=_fmt(config.cube_friction), condim="4", solref="0.01 1", priority="1")
    for i, colour in enumerate(PLATE_COLOURS):
        body = ET.SubElement(world, "body", name=f"plate_{colour}", mocap="true",
                             pos=_fmt((0.4, -0.3 + 0.6 * i, config.plate_half_height)))
        ET.SubElement(body, "geom", name=f"plate_{colour}", type="cylinder",
                      size=_fmt((config.plate_radius, config.plate_half_height)),
                      rgba=_fmt((*COLOURS[colour], 1.0)), friction="1.0 0.01 0.001")

    hand = _find_body(world, ROBOT_PREFIX + "hand")
    ET.SubElement(hand, "site", name="tcp", pos=_fmt((0, 0, TCP_OFFSET)), size="0.004", rgba="1 0 0 0", group="4")
    for cam in config.cameras:
        parent = world if cam.parent == "world" else _find_body(world, ROBOT_PREFIX + cam.parent)
        ET.SubElement(parent, "camera", name=cam.name, pos=_fmt(cam.pos), xyaxes=_fmt(cam.xyaxes),
                      fovy=_fmt((cam.fovy,)))
