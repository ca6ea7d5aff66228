"""Depth, where the cameras publish it: decoded from every encoding a ROS depth camera sends, read from bags aligned to
the rows, carried losslessly by packs, trained on as a fourth channel (an RGB checkpoint fine-tuned into an RGB-D one
starts as the RGB policy), and fed to the runtime by eval-sim from the simulated cameras."""

from __future__ import annotations

import json
import shutil
import struct

import cv2
import numpy as np
import pytest
import torch
from cell_bags import FRONT_DEPTH, write_cell_bag
from sensor_msgs.msg import CompressedImage, Image

from mambavla.data import EpisodeDataset, EpisodeError, read_episode
from mambavla.data.bags import BagError, ReadOptions, depth_topic
from mambavla.data.images import depth_source_size, depth_to_mm, metres_to_mm, resize_depth
from mambavla.data.packed import TrainingEpisodes
from mambavla.train.augment import augment

DEPTH_MM = np.array([[0, 400, 401], [1500, 65535, 7]], np.uint16)


def depth_image(pixels: np.ndarray, encoding: str, bigendian: bool = False) -> Image:
    data = pixels.astype(pixels.dtype.newbyteorder(">" if bigendian else "<"))
    h, w = pixels.shape
    return Image(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian), step=w * pixels.itemsize,
                 data=data.tobytes())


def test_depth_in_millimetres_and_metres_reads_as_millimetres():
    for encoding in ("16UC1", "mono16"):
        np.testing.assert_array_equal(depth_to_mm(depth_image(DEPTH_MM, encoding)), DEPTH_MM)
    np.testing.assert_array_equal(depth_to_mm(depth_image(DEPTH_MM, "16UC1", bigendian=True)), DEPTH_MM)
    metres = np.array([[0.4004, np.nan, -1.0], [np.inf, 70.0, 1.2]], np.float32)
    # NaN, Inf, negative and beyond 65.535 m are no reading, as a sensor's 0
    np.testing.assert_array_equal(depth_to_mm(depth_image(metres, "32FC1")), [[400, 0, 0], [0, 0, 1200]])


def test_compressed_depth_reads_and_what_cannot_be_depth_is_refused():
    png = cv2.imencode(".png", DEPTH_MM)[1].tobytes()
    header = struct.pack("<iff", 0, 0.0, 0.0)  # compressed_depth_image_transport's ConfigHeader
    msg = CompressedImage(format="16UC1; compressedDepth png", data=header + png)
    np.testing.assert_array_equal(depth_to_mm(msg), DEPTH_MM)
    np.testing.assert_array_equal(depth_to_mm(CompressedImage(format="16UC1; png", data=png)), DEPTH_MM)
    rgba16 = cv2.imencode(".png", np.zeros((4, 4, 4), np.uint16))[1].tobytes()  # decodes to 4x the bytes
    with pytest.raises(ValueError, match="16-bit samples, colour type 6; expected 16-bit greyscale"):
        depth_to_mm(CompressedImage(format="16UC1; compressedDepth png", data=header + rgba16))
    with pytest.raises(ValueError, match="32FC1 compressedDepth"):
        depth_to_mm(CompressedImage(format="32FC1; compressedDepth", data=header + png))
    # its size, as policy_node checks alignment, comes from the PNG header without decoding it
    assert depth_source_size(msg) == DEPTH_MM.shape == depth_source_size(depth_image(DEPTH_MM, "16UC1"))
    with pytest.raises(ValueError, match="16-bit samples, colour type 6"):
        depth_source_size(CompressedImage(format="16UC1; compressedDepth png", data=header + rgba16))
    colour = cv2.imencode(".jpg", np.zeros((4, 4, 3), np.uint8))[1].tobytes()
    with pytest.raises(ValueError, match="16-bit PNG"):
        depth_to_mm(CompressedImage(format="rgb8; jpeg compressed bgr8", data=colour))
    with pytest.raises(ValueError, match="unsupported depth encoding 'rgb8'"):
        depth_to_mm(Image(height=1, width=1, encoding="rgb8", step=3, data=bytes(3)))
    with pytest.raises(ValueError, match="truncated image data"):
        depth_to_mm(Image(height=2, width=3, encoding="16UC1", step=6, data=bytes(7)))


def test_depth_is_resized_without_inventing_a_surface_between_object_and_table():
    depth = np.full((8, 8), 1500, np.uint16)
    depth[:, :4] = 500  # an object's edge in front of the table
    small = resize_depth(depth, (3, 5))
    assert set(np.unique(small)) <= {500, 1500}  # an averaging resize would put a surface at 1000 mm
    assert small.shape == (3, 5)
    np.testing.assert_array_equal(metres_to_mm(np.array([0.5, 1.5])), [500, 1500])


def test_a_realsense_depth_stream_is_read_aligned_to_the_camera_rows(tmp_path):
    bag = write_cell_bag(tmp_path / "demo")
    options = ReadOptions.make(instruction="lift the red cube", image_size=(16, 16), depth=True)
    episode = read_episode(bag, cameras=["front"], options=options)
    depth = episode.depth["front"]
    assert depth.dtype == np.uint16 and depth.shape == (len(episode), 16, 16)
    # the cell records frame k's depth as 800 + k mm, and a row is a camera frame at the camera's rate
    np.testing.assert_array_equal(depth[:, 0, 0], 800 + np.arange(len(episode)))
    assert episode.meta["roles"]["front_depth"] == FRONT_DEPTH
    without = read_episode(bag, cameras=["front"], options=ReadOptions.make(instruction="lift the red cube"))
    assert without.depth == {} and "front_depth" not in without.meta["roles"]


def test_depth_stamped_away_from_its_colour_frame_is_refused_naming_the_topic(tmp_path):
    options = ReadOptions.make(instruction="lift the red cube", depth=True)
    bag = write_cell_bag(tmp_path / "late", depth_offset=0.012)  # a depth stream not synchronised with colour
    with pytest.raises(EpisodeError, match=rf"depth of camera 'front' on {FRONT_DEPTH}: .* is 12\.0 ms from it"):
        read_episode(bag, cameras=["front"], options=options)
    bag = write_cell_bag(tmp_path / "close", depth_offset=0.002)  # stamp rounding: within the bound
    assert len(read_episode(bag, cameras=["front"], options=options).depth["front"]) > 50


def test_a_camera_without_depth_names_the_map_that_gives_it(tmp_path):
    bag = write_cell_bag(tmp_path / "demo")
    options = ReadOptions.make(instruction="lift the red cube", depth=True)
    with pytest.raises(BagError, match=r"no depth topic for wrist_depth.*--map wrist_depth=TOPIC"):
        read_episode(bag, cameras=["front", "wrist"], options=options)
    # a mapped topic is no longer a candidate for discovery: both roles mapped to the one depth stream
    mapped = ReadOptions.make({"front_depth": FRONT_DEPTH, "wrist_depth": FRONT_DEPTH}, "lift the red cube", depth=True)
    episode = read_episode(bag, cameras=["front", "wrist"], options=mapped)
    np.testing.assert_array_equal(episode.depth["wrist"], episode.depth["front"])
    with pytest.raises(BagError, match="a wrist_depth topic must be"):
        read_episode(bag, cameras=["front", "wrist"],
                     options=ReadOptions.make({"wrist_depth": "/joint_states"}, "lift the red cube", depth=True))


def test_augmentation_shifts_depth_with_the_colour_and_never_jitters_it():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 4, 16, 16) * 255
    out = augment(images, torch.Generator().manual_seed(1), shift=0, jitter=0.5)
    assert not torch.allclose(out[:, :, :3], images[:, :, :3])  # colour jittered
    torch.testing.assert_close(out[:, :, 3], images[:, :, 3])  # depth untouched
    shifted = augment(images, torch.Generator().manual_seed(1), shift=2, jitter=0.0)
    colour_moved = shifted[:, :, 0] - images[:, :, 0]
    depth_moved = shifted[:, :, 3] - images[:, :, 3]
    assert colour_moved.abs().max() > 0 and depth_moved.abs().max() > 0  # moved together, by one draw
    torch.testing.assert_close(augment(images[:, :, [0, 0, 0, 3]], torch.Generator().manual_seed(1), shift=2,
                                       jitter=0.0)[:, :, 3], shifted[:, :, 3])


def test_an_rgb_checkpoint_becomes_an_rgbd_one_that_starts_as_the_rgb_policy(tmp_path):
    from mambavla.model.checkpoint import save_checkpoint
    from mambavla.model.config import preset
    from mambavla.model.modeling_mambavla import MambaVLA
    from mambavla.model.vision import depth_channel
    from mambavla.train.trainer import _init_checkpoint

    torch.manual_seed(0)
    rgb = MambaVLA(preset("tiny")).eval()
    save_checkpoint(rgb, tmp_path / "rgb")
    config = rgb.config.replace(use_depth=True)
    state, _ = _init_checkpoint(str(tmp_path / "rgb"), config)
    rgbd = MambaVLA(config).eval()
    rgbd.load_state_dict(state)
    h, w = config.image_size
    colour = {c: torch.randint(0, 256, (2, 3, h, w)).float() for c in config.cameras}
    depth = {c: depth_channel(torch.randint(0, 3000, (2, 1, h, w)), config.depth_scale) for c in config.cameras}
    proprio, task = torch.randn(2, config.proprio_dim), torch.randn(2, config.d_model)
    with torch.no_grad():
        expected = rgb.encode_frame(colour, proprio, task)
        got = rgbd.encode_frame({c: torch.cat([colour[c], depth[c]], dim=1) for c in config.cameras}, proprio, task)
    torch.testing.assert_close(got, expected)  # the depth channel's weights start at zero


@pytest.mark.sim
def test_simulated_depth_is_recorded_read_packed_trained_on_and_fed_by_eval_sim(tmp_path, capsys):
    from sim_fixtures import CAMERA_SIZE, recorded_episode

    from mambavla.cli import main
    from mambavla.data.packed import write_pack
    from mambavla.model.language import InstructionEncoder
    from mambavla.runtime import PolicyRuntime

    bag, _ = recorded_episode(depth=True)
    data = tmp_path / "episodes"
    shutil.copytree(bag, data / bag.name)
    dataset = EpisodeDataset([data], chunk=1, verbose=False, options=ReadOptions.make(depth=True))
    depth = dataset.episodes[0].depth
    assert set(depth) == {"front", "wrist"} and depth["front"].shape[1:] == CAMERA_SIZE
    # the front camera looks down at the table from about a metre; the wrist camera sees the table and cubes closer
    assert 600 < np.median(depth["front"]) < 1500 and 50 < np.median(depth["wrist"]) < 800
    assert (depth["front"] > 0).mean() > 0.9  # the cell fills the view: nothing past the far plane
    assert json.loads((bag / "episode.json").read_text())["depth_cameras"] == ["front", "wrist"]

    episodes = TrainingEpisodes.from_dataset(dataset, stride=1)
    write_pack(episodes, tmp_path / "pack", InstructionEncoder("minilm"))
    packed = TrainingEpisodes.load(tmp_path / "pack")
    for c in ("front", "wrist"):
        np.testing.assert_array_equal(packed.depth[c], episodes.depth[c])  # lossless, unlike the JPEG colour

    out = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "pack"), "--out", str(out), "--preset", "tiny", "--depth", "--steps",
            "2", "--batch-size", "2", "--segment-frames", "4", "--val-fraction", "0", "--json"]
    assert main(args) == 0
    capsys.readouterr()
    runtime = PolicyRuntime.from_checkpoint(out / "last")
    assert runtime.config.use_depth and runtime.image_size == CAMERA_SIZE
    runtime.set_instruction(episodes.instructions[0])
    h, w = CAMERA_SIZE
    observation = {"images": {c: np.zeros((h, w, 3), np.uint8) for c in runtime.camera_names},
                   "proprio": episodes.proprio[0]}
    with pytest.raises(ValueError, match=r"depth\['front'\]: this policy uses depth"):
        runtime.step(observation)
    chunk = runtime.step({**observation, "depth": {c: episodes.depth[c][0] for c in runtime.camera_names}})
    assert np.isfinite(chunk.actions).all()

    # offline replay of the recorded bag pairs each colour frame with its depth, as policy_node does
    assert main(["replay", str(data), "--checkpoint", str(out / "last"), "--out", str(tmp_path / "replay"),
                 "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["chunks"] > 5
    plain = tmp_path / "plain"
    main(["collect", "--task", "lift", "--episodes", "1", "--seed", "5", "--out", str(plain), "--camera-size",
          *map(str, CAMERA_SIZE), "--json"])
    capsys.readouterr()
    assert main(["replay", str(plain), "--checkpoint", str(out / "last"), "--out", str(tmp_path / "r2"), "--json"]) == 2
    assert "no depth topic for front_depth, wrist_depth" in capsys.readouterr().err

    assert main(["eval-sim", "--checkpoint", str(out / "last"), "--tasks", "lift", "--episodes", "1",
                 "--time-limit", "0.6", "--out", str(tmp_path / "eval"), "--json", "--torch-threads", "1"]) == 0
    episode = json.loads(capsys.readouterr().out)["tasks"]["lift"]["episodes_detail"][0]
    assert episode["error"] == "" and episode["chunks_produced"] >= 2  # every observation came with its depth


def test_training_a_depth_policy_on_bags_without_depth_says_which_stream_is_missing(tmp_path):
    from mambavla.data.dataset import DatasetError
    from mambavla.train.trainer import Trainer, TrainSettings

    bag = write_cell_bag(tmp_path / "bags" / "demo", seconds=1.0)
    settings = TrainSettings(steps=1, depth=True, instruction="lift the red cube", val_fraction=0)
    with pytest.raises(DatasetError, match=r"no depth topic for wrist_depth"):
        Trainer(tmp_path / "run", [str(bag.parent)], "tiny", settings, progress=False)
    assert depth_topic("front") == "/cameras/front/aligned_depth_to_color/image_raw"  # realsense-ros's name


def test_an_rgbd_policy_exports_to_onnx_and_streams_as_the_torch_runtime(tmp_path):
    pytest.importorskip("onnxruntime")
    from mambavla.runtime import PolicyRuntime
    from mambavla.runtime.onnx_graph import export_step
    from mambavla.runtime.onnx_step import streamed_parity

    model = PolicyRuntime.from_preset("tiny", seed=2, use_depth=True).model
    parity = streamed_parity(model, export_step(model, tmp_path / "step.onnx"), steps=6)
    assert parity["max_abs_diff"] <= 1e-3, parity


def test_the_runtime_refuses_depth_that_is_not_the_colour_frames_size():
    from mambavla.runtime import PolicyRuntime

    rt = PolicyRuntime.from_preset("tiny", use_depth=True)
    rt.set_instruction("lift the red cube")
    frames = {c: np.zeros((48, 64, 3), np.uint8) for c in rt.camera_names}
    aligned = {c: np.full((48, 64), 800, np.uint16) for c in rt.camera_names}
    assert np.isfinite(rt.step({"images": frames, "proprio": np.zeros(8, np.float32), "depth": aligned}).actions).all()
    unaligned = {**aligned, "front": np.full((480, 640), 800, np.uint16)}  # another stream's pixels
    with pytest.raises(ValueError, match=r"depth\['front'\]: 640x480, its colour frame 64x48: depth must be aligned"):
        rt.step({"images": frames, "proprio": np.zeros(8, np.float32), "depth": unaligned})


def test_a_frame_with_a_bad_image_writes_nothing_of_itself(tmp_path):
    from mambavla.data.bags import EpisodeWriter
    from mambavla.data.roles import inspect

    writer = EpisodeWriter(tmp_path / "ep", ("front", "wrist"), (8, 8), 0.05, depth_cameras=("front", "wrist"))
    good = {"front": np.zeros((8, 8, 3), np.uint8), "wrist": np.zeros((8, 8, 3), np.uint8)}
    depth = {"front": np.full((8, 8), 500, np.uint16), "wrist": np.full((8, 8), 500, np.uint16)}
    state = (np.zeros(7), np.zeros(2), np.array([0.5, 0.0, 0.3]), np.array([1.0, 0.0, 0.0, 0.0]), np.zeros(7))
    writer.write_frame(0.0, good, *state, depth=depth)
    with pytest.raises(EpisodeError, match="camera 'wrist' gave"):
        writer.write_frame(0.05, {**good, "wrist": np.zeros((4, 4, 3), np.uint8)}, *state, depth=depth)
    with pytest.raises(EpisodeError, match="depth of camera 'wrist'"):
        writer.write_frame(0.05, good, *state, depth={**depth, "wrist": depth["wrist"].astype(np.float32)})
    writer.close()
    counts = inspect(tmp_path / "ep", ["front", "wrist"], depth=True).counts
    assert {counts[t] for t in counts if t.startswith("/cameras/")} == {1}  # every stream has the one good frame


def test_a_pack_of_the_first_version_still_reads(tmp_path):
    import json as json_module

    from mambavla.data.packed import write_pack
    from mambavla.model.language import InstructionEncoder

    bag = write_cell_bag(tmp_path / "bags" / "demo", seconds=1.0)
    dataset = EpisodeDataset([bag.parent], chunk=1, verbose=False, cameras=["front"],
                             options=ReadOptions.make(instruction="lift the red cube", image_size=(16, 16)))
    episodes = TrainingEpisodes.from_dataset(dataset, stride=1)
    write_pack(episodes, tmp_path / "pack", InstructionEncoder("minilm"))
    assert json_module.loads((tmp_path / "pack" / "pack.json").read_text())["version"] == 1  # no depth: version 1
    assert TrainingEpisodes.load(tmp_path / "pack").depth == {}
