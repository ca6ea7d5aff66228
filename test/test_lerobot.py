"""LeRobotDataset v3 export and import: round trip of training samples, CRISP-style datasets, FR3 kinematics,
bad input."""

import fractions
import json

import numpy as np
import pytest

from mambavla import spaces
from mambavla.data import EpisodeDataset, EpisodeWriter, read_episode
from mambavla.data.lerobot import LeRobotError, export_lerobot, import_lerobot

SIZE = (64, 80)  # (height, width): not square, so a swapped axis shows
FPS = 20
CAMERAS = ("front", "wrist")
HOME_JOINTS = np.array([0.0, -np.pi / 4, 0.0, -3 * np.pi / 4, 0.0, np.pi / 2, np.pi / 4])


def scene(t: int, camera: int) -> np.ndarray:
    """A smooth frame with a square moving across it: content a video codec keeps close to the original."""
    yy, xx = np.mgrid[0:SIZE[0], 0:SIZE[1]]
    img = np.stack([xx * 2 + 40 * camera + 5 * t, yy * 3, np.full_like(xx, 90 + 30 * camera)], axis=-1).astype(float)
    x0 = (5 + 6 * t) % (SIZE[1] - 16)
    img[20:40, x0:x0 + 16] = (230, 40, 40)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_episode(path, frames, seed, instruction="lift the red cube", task="lift", success=True):
    """The hand moves and turns a little each frame; the action is the next pose, the gripper closes halfway."""
    rng = np.random.default_rng(seed)
    vectors = np.cumsum(np.concatenate([[[0.45, 0.02 * seed, 0.30, 0.05, -0.03, 0.4]],
                                        rng.normal(0, [0.004, 0.004, 0.004, 0.01, 0.01, 0.02], (frames, 6))]), axis=0)
    joints = HOME_JOINTS + rng.normal(0, 0.05, 7)
    with EpisodeWriter(path, CAMERAS, SIZE, 1.0 / FPS, {"task": task, "seed": seed, "success": success}) as w:
        w.write_instruction(0.0, instruction)
        for t in range(frames):
            pos, quat = spaces.vector_to_pose(vectors[t])
            width = 0.04 if t < frames // 2 else 0.012
            action = np.concatenate([vectors[t + 1], [float(t >= frames // 2)]])
            w.write_frame(t / FPS, {c: scene(t + seed, i) for i, c in enumerate(CAMERAS)}, joints + 0.01 * t,
                          np.array([width, width]), pos, quat, action)
    return path


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    root = tmp_path_factory.mktemp("bags")
    write_episode(root / "episode_a", 12, seed=0)
    write_episode(root / "episode_b", 9, seed=1, instruction="place the cube", task="place", success=False)
    return root


@pytest.fixture(scope="module")
def exported(ours, tmp_path_factory):
    out = tmp_path_factory.mktemp("lerobot") / "ours"
    summary = export_lerobot([ours], out, progress=False)
    return out, summary


def test_export_writes_the_v3_layout_with_many_episodes_per_file(exported):
    import av
    import pyarrow.parquet as pq

    out, summary = exported
    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == FPS
    assert info["total_episodes"] == 2 and info["total_frames"] == 21 and info["total_tasks"] == 2
    assert info["features"]["observation.images.front"]["shape"] == [*SIZE, 3]
    assert info["features"]["observation.images.front"]["info"]["video.codec"] == "av1"
    assert info["features"]["action"]["names"] == list(spaces.ACTION_NAMES)
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["length"] for e in episodes] == [12, 9]
    assert [e["dataset_from_index"] for e in episodes] == [0, 12]
    assert episodes[1]["videos/observation.images.wrist/from_timestamp"] == pytest.approx(12 / FPS)
    assert episodes[1]["videos/observation.images.wrist/file_index"] == 0  # both episodes in one video file
    assert episodes[0]["tasks"] == ["lift the red cube"]
    data = pq.read_table(out / "data/chunk-000/file-000.parquet")
    assert data.num_rows == 21 and data.column("index").to_pylist() == list(range(21))
    assert data.column("timestamp").to_numpy()[12] == 0.0  # timestamps restart per episode
    tasks = pq.read_table(out / "meta/tasks.parquet")
    assert dict(zip(tasks.column("task").to_pylist(), tasks.column("task_index").to_pylist())) == \
        {"lift the red cube": 0, "place the cube": 1}
    stats = json.loads((out / "meta/stats.json").read_text())
    assert np.array(stats["observation.images.front"]["mean"]).shape == (3, 1, 1)
    assert stats["action"]["count"] == [21]
    assert (stats["index"]["min"], stats["index"]["max"], stats["episode_index"]["max"]) == ([0], [20], [1])
    assert stats["frame_index"]["max"] == [11] and stats["timestamp"]["max"] == [pytest.approx(11 / FPS)]
    with av.open(str(out / "videos/observation.images.front/chunk-000/file-000.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name in ("libdav1d", "av1", "libaom-av1")
        assert sum(1 for _ in container.decode(stream)) == 21
    assert summary["video_files"] == 2 and summary["episodes"] == 2


def test_export_then_import_gives_the_same_training_samples(ours, exported, tmp_path):
    out, _ = exported
    summary = import_lerobot(out, tmp_path / "back", image_format="raw", progress=False)
    assert summary["episodes"] == 2 and summary["gripper"] == "closed-is-1" and "absolute" in summary["action"]
    for mode in ("absolute", "delta"):
        original = EpisodeDataset(ours, chunk=4, action_mode=mode, use_cache=False, verbose=False)
        back = EpisodeDataset(tmp_path / "back", chunk=4, action_mode=mode, use_cache=False, verbose=False)
        assert len(back) == len(original) == 21 and back.dt == pytest.approx(original.dt)
        assert back.cameras == original.cameras and back.image_size == original.image_size
        for i in range(len(original)):
            a, b = original[i], back[i]
            assert b["instruction"] == a["instruction"]
            assert np.array_equal(b["proprio"], a["proprio"]), i
            assert np.array_equal(b["actions"], a["actions"]), i
            assert np.array_equal(b["action_pad"], a["action_pad"])
            for cam in CAMERAS:
                err = np.abs(b["images"][cam].astype(int) - a["images"][cam].astype(int))
                assert err.mean() < 8.0, (i, cam, err.mean())  # AV1 at crf 30 and 4:2:0 chroma on a 64x80 frame
                e, t = original.locate(i)
                frames = original.episodes[e].images[cam]
                nearest = np.argmin([np.abs(b["images"][cam].astype(int) - f.astype(int)).mean() for f in frames])
                assert nearest == t, (i, cam, nearest)  # the frame of this step, not a neighbour
    meta = read_episode(sorted((tmp_path / "back").iterdir())[1]).meta
    assert (meta["task"], meta["seed"], meta["success"]) == ("place", 1, False)


def test_the_cli_exports_h264_and_imports_resized_frames(ours, tmp_path, capsys):
    from mambavla.cli import main

    assert main(["dataset", "export-lerobot", str(ours), "--out", str(tmp_path / "lr"), "--codec", "h264",
                 "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["codec"] == "h264 (libx264)" and exported["frames"] == 21
    info = json.loads((tmp_path / "lr/meta/info.json").read_text())
    assert info["features"]["observation.images.wrist"]["info"]["video.codec"] == "h264"
    assert main(["dataset", "import-lerobot", str(tmp_path / "lr"), "--out", str(tmp_path / "back"),
                 "--map", "wrist=observation.images.wrist", "--image-size", "32x40", "--json"]) == 0
    imported = json.loads(capsys.readouterr().out)
    assert imported["cameras"] == {"wrist": "observation.images.wrist"} and imported["frames"] == 21
    ds = EpisodeDataset(tmp_path / "back", chunk=2, use_cache=False, verbose=False)
    assert ds.cameras == ("wrist",) and ds[0]["images"]["wrist"].shape == (32, 40, 3)
    assert main(["dataset", "import-lerobot", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_image_features_stored_in_the_parquet_import_as_cameras(ours, exported, tmp_path):
    import shutil

    import cv2
    import pyarrow as pa
    import pyarrow.parquet as pq

    out, _ = exported
    root = tmp_path / "images"
    shutil.copytree(out, root)
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["observation.images.front"] = {"dtype": "image", "shape": [*SIZE, 3],
                                                    "names": ["height", "width", "channels"]}
    (root / "meta/info.json").write_text(json.dumps(info))
    frames = [f for p in sorted(ours.iterdir()) for f in read_episode(p).images["front"]]
    png = [{"bytes": cv2.imencode(".png", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[1].tobytes(), "path": None}
           for f in frames]  # as LeRobot embeds an `image` feature: PNG bytes in a struct column
    path = root / "data/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(path).append_column("observation.images.front", pa.array(png)), path)
    import_lerobot(root, tmp_path / "bags", image_format="raw", progress=False)
    back = [f for p in sorted((tmp_path / "bags").iterdir()) for f in read_episode(p).images["front"]]
    assert len(back) == len(frames) and all(np.array_equal(a, b) for a, b in zip(back, frames))  # PNG: lossless


def test_files_roll_over_at_their_size_limit_and_still_import(ours, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "small_files"
    # mpeg4 hands out each frame's packet at once (SVT-AV1 holds back about a second of frames, so its files
    # pass the limit by that much before the next episode starts a new one)
    summary = export_lerobot([ours], out, codec="mpeg4", video_file_mb=1e-4, data_file_mb=1e-4, progress=False)
    assert summary["video_files"] == 4 and summary["data_files"] == 2  # each episode in files of its own
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["videos/observation.images.front/file_index"] for e in episodes] == [0, 1]
    assert [e["videos/observation.images.front/from_timestamp"] for e in episodes] == [0.0, 0.0]
    assert [e["data/file_index"] for e in episodes] == [0, 1]
    assert (out / "data/chunk-000/file-001.parquet").exists()
    import_lerobot(out, tmp_path / "back", image_format="raw", progress=False)
    original = EpisodeDataset(ours, chunk=2, use_cache=False, verbose=False)
    back = EpisodeDataset(tmp_path / "back", chunk=2, use_cache=False, verbose=False)
    assert all(np.array_equal(back[i]["actions"], original[i]["actions"]) for i in range(len(original)))


def test_fr3_forward_kinematics_gives_the_franka_home_pose():
    from mambavla.data.fr3_kinematics import forward_kinematics

    position, quat = forward_kinematics(HOME_JOINTS)
    # libfranka's O_T_EE at the home configuration: 30.7 cm ahead, 48.7 cm up, the hand pointing down
    assert np.allclose(position, [0.3069, 0.0, 0.4869], atol=5e-4)
    assert spaces.quat_angle_between(quat, spaces.EE_REFERENCE_QUAT) < 1e-6
    turned = HOME_JOINTS.copy()
    turned[0] = np.pi / 2  # the base joint swings the hand to +y
    position, _ = forward_kinematics(turned)
    assert np.allclose(position, [0.0, 0.3069, 0.4869], atol=5e-4)


def test_fr3_forward_kinematics_matches_the_pose_franky_sim_reports():
    from sim_fixtures import recorded_episode

    from mambavla.data.fr3_kinematics import forward_kinematics

    path, _ = recorded_episode()  # a real lift episode through franky against franky-sim
    ep = read_episode(path)
    position, quat = forward_kinematics(ep.joint_positions[:, :7].astype(np.float64))
    recorded_position, recorded_quat = spaces.vector_to_pose(ep.proprio[:, :6].astype(np.float64))
    assert np.abs(position - recorded_position).max() < 1e-5
    assert spaces.quat_angle_between(quat, recorded_quat).max() < 1e-5


def write_lerobot(root, episodes, state_names, action_names, fps=10, joint_key=None, gripper_key=None,
                  length_override=None, cameras=("primary", "wrist_camera")):
    """A LeRobotDataset v3 written with pyarrow and PyAV the way LeRobot's recorder lays it out (h264 videos,
    several episodes per file, list columns, tasks as a pandas-indexed parquet)."""
    import av
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True)
    features = {f"observation.images.{c}": {"dtype": "video", "shape": [*SIZE, 3],
                                             "names": ["height", "width", "channels"]} for c in cameras}
    features["observation.state"] = {"dtype": "float32", "shape": [len(state_names)], "names": state_names}
    if joint_key:
        features[joint_key] = {"dtype": "float32", "shape": [7], "names": [f"joint_{i}" for i in range(7)]}
    if gripper_key:
        features[gripper_key] = {"dtype": "float32", "shape": [1], "names": ["gripper"]}
    features["action"] = {"dtype": "float32", "shape": [len(action_names)], "names": action_names}
    for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        features[k] = {"dtype": "float32" if k == "timestamp" else "int64", "shape": [1], "names": None}
    info = {"codebase_version": "v3.0", "robot_type": "fr3", "fps": fps, "features": features,
            "total_episodes": len(episodes), "total_frames": sum(len(e["state"]) for e in episodes),
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"}
    (root / "meta").mkdir()
    (root / "meta/info.json").write_text(json.dumps(info))
    tasks = pa.table({"task_index": [0], "__index_level_0__": ["pick up the cube"]})  # pandas' unnamed index
    pq.write_table(tasks, root / "meta/tasks.parquet")
    rows, columns, index = [], {k: [] for k in features if not k.startswith("observation.images")}, 0
    containers = {}
    for c in cameras:
        (root / f"videos/observation.images.{c}/chunk-000").mkdir(parents=True)
        container = av.open(str(root / f"videos/observation.images.{c}/chunk-000/file-000.mp4"), "w")
        stream = container.add_stream("libx264", fps, options={"g": "2", "crf": "18"})
        stream.height, stream.width, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        stream.time_base = fractions.Fraction(1, fps)
        containers[c] = (container, stream)
    for e, ep in enumerate(episodes):
        n = len(ep["state"])
        row = {"episode_index": e, "tasks": ["pick up the cube"], "length": length_override or n,
               "data/chunk_index": 0, "data/file_index": 0, "dataset_from_index": index, "dataset_to_index": index + n}
        for c, (container, stream) in containers.items():
            row[f"videos/observation.images.{c}/chunk_index"] = 0
            row[f"videos/observation.images.{c}/file_index"] = 0
            row[f"videos/observation.images.{c}/from_timestamp"] = index / fps
            row[f"videos/observation.images.{c}/to_timestamp"] = (index + n) / fps
            for t in range(n):
                frame = av.VideoFrame.from_ndarray(scene(t, cameras.index(c)), format="rgb24")
                frame.pts = index + t
                for packet in stream.encode(frame):
                    container.mux(packet)
        rows.append(row)
        columns["observation.state"].extend(ep["state"].tolist())
        if joint_key:
            columns[joint_key].extend(ep["joints"].tolist())
        if gripper_key:
            columns[gripper_key].extend(ep["gripper"].tolist())
        columns["action"].extend(ep["action"].tolist())
        columns["timestamp"].extend((np.arange(n) / fps).tolist())
        columns["frame_index"].extend(range(n))
        columns["episode_index"].extend([e] * n)
        columns["index"].extend(range(index, index + n))
        columns["task_index"].extend([0] * n)
        index += n
    for container, stream in containers.values():
        for packet in stream.encode():
            container.mux(packet)
        container.close()
    types = {k: pa.list_(pa.float32(), f["shape"][0]) for k, f in features.items() if f["dtype"] == "float32"
             and f["shape"] != [1]}
    types |= {k: (pa.float32() if features[k]["dtype"] == "float32" else pa.int64())
              for k in columns if k not in types}
    (root / "data/chunk-000").mkdir(parents=True)
    data = pa.table({k: pa.array(v, types[k]) for k, v in columns.items()})
    pq.write_table(data, root / "data/chunk-000/file-000.parquet")
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "meta/episodes/chunk-000/file-000.parquet")
    return root


def crisp_episode(rng, frames):
    """A Cartesian CRISP-style episode: pose as x, y, z, roll, pitch, yaw (extrinsic xyz Euler), gripper 1 = open
    (opened at reset, closed from the middle on), the absolute target pose as the action."""
    from scipy.spatial.transform import Rotation

    xyz = np.array([0.4, 0.1, 0.35]) + np.cumsum(rng.normal(0, 0.005, (frames + 1, 3)), axis=0)
    rot = Rotation.from_euler("xyz", [np.pi, 0.05, 0.3]) * Rotation.from_rotvec(
        np.cumsum(rng.normal(0, 0.01, (frames + 1, 3)), axis=0))
    euler = rot.as_euler("xyz")
    opened = (np.arange(frames) < frames // 2).astype(float)
    state = np.concatenate([xyz[:-1], euler[:-1], (1.0 - opened)[:, None]], axis=1)  # CRISP's state: 1 - value
    action = np.concatenate([xyz[1:], euler[1:], opened[:, None]], axis=1)
    return {"state": state, "action": action, "xyz": xyz, "quat": rot.as_quat(), "opened": opened}


def test_crisp_cartesian_dataset_imports_with_its_gripper_flipped_and_euler_angles_converted(tmp_path):
    rng = np.random.default_rng(4)
    eps = [crisp_episode(rng, 10), crisp_episode(rng, 8)]
    root = write_lerobot(tmp_path / "crisp", eps, ["x", "y", "z", "roll", "pitch", "yaw", "gripper"],
                         ["x", "y", "z", "roll", "pitch", "yaw", "gripper"])
    summary = import_lerobot(root, tmp_path / "bags", mapping=["front=observation.images.primary",
                                                               "wrist=observation.images.wrist_camera"],
                             image_format="raw", progress=False)
    assert summary["gripper"] == "open-is-1" and "absolute" in summary["action"]
    assert summary["conventions"]["gripper"] == "action gripper high in the first frame of 2 of 2 episodes (they " \
                                                "start open)"
    assert summary["dt"] == pytest.approx(0.1)
    ds = EpisodeDataset(tmp_path / "bags", chunk=2, use_cache=False, verbose=False)
    assert len(ds) == 18 and ds.cameras == ("front", "wrist") and ds.dt == pytest.approx(0.1)
    ep = read_episode(sorted((tmp_path / "bags").iterdir())[0])
    assert ep.instruction == "pick up the cube"
    pos, quat = spaces.vector_to_pose(ep.actions[:, :6].astype(np.float64))
    assert np.allclose(pos, eps[0]["xyz"][1:], atol=1e-6)
    assert np.all(spaces.quat_angle_between(quat, eps[0]["quat"][1:]) < 1e-5)
    assert ep.actions[:, 6].tolist() == (1.0 - eps[0]["opened"]).tolist()  # ours: 1 = closed
    assert np.allclose(ep.proprio[:5, 6:], 0.04) and np.allclose(ep.proprio[5:, 6:], 0.0)  # fingers open, then shut
    err = np.abs(ep.images["front"].astype(int) - np.stack([scene(t, 0) for t in range(10)]).astype(int))
    assert err.mean() < 4.0
    assert np.isnan(ep.joint_positions[:, :7]).all()  # the dataset has no arm joints

    # and on to LeRobot again: the arm joints' statistics are null (strict JSON), the samples survive
    export_lerobot([tmp_path / "bags"], tmp_path / "again", progress=False)
    stats = json.loads((tmp_path / "again/meta/stats.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert stats["observation.state.joint"]["mean"][:7] == [None] * 7
    import_lerobot(tmp_path / "again", tmp_path / "bags_again", image_format="raw", progress=False)
    again = EpisodeDataset(tmp_path / "bags_again", chunk=2, use_cache=False, verbose=False)
    assert len(again) == len(ds)
    for i in range(len(ds)):
        assert np.array_equal(again[i]["proprio"], ds[i]["proprio"]) and np.array_equal(again[i]["actions"],
                                                                                        ds[i]["actions"])


def test_a_dataset_written_by_lerobot_itself_imports_with_crisp_conventions(tmp_path):
    """test/data/lerobot_v3_fr3: written by lerobot-dataset 0.4.4's LeRobotDataset (see make_lerobot_v3_fr3.py)."""
    from pathlib import Path

    data = Path(__file__).parent / "data"
    truth = json.loads((data / "lerobot_v3_fr3_truth.json").read_text())
    summary = import_lerobot(data / "lerobot_v3_fr3", tmp_path / "bags", image_format="raw", progress=False,
                             mapping=["front=observation.images.primary", "wrist=observation.images.wrist"])
    assert summary["episodes"] == 3 and summary["frames"] == 39 and summary["dt"] == pytest.approx(0.05)
    assert summary["gripper"] == "open-is-1" and "absolute" in summary["action"]
    for path, expected in zip(sorted((tmp_path / "bags").iterdir()), truth):
        ep = read_episode(path)
        assert len(ep) == len(expected["xyz"]) and ep.instruction == "pick up the cube"
        pos, quat = spaces.vector_to_pose(ep.actions[:, :6].astype(np.float64))
        assert np.allclose(pos, expected["xyz"], atol=1e-6)
        assert np.all(spaces.quat_angle_between(quat, expected["quat"]) < 1e-5)
        assert ep.actions[:, 6].tolist() == [1.0 - o for o in expected["opened"]]
        opened = np.array(expected["opened"], dtype=bool)
        assert np.allclose(ep.proprio[opened, 6:], 0.04) and np.allclose(ep.proprio[~opened, 6:], 0.0)
        yy, xx = np.mgrid[0:SIZE[0], 0:SIZE[1]]
        for t in range(len(ep)):
            recorded = np.stack([(xx * 3 + 5 * t) % 256, yy * 3, np.full_like(xx, 100)], -1)
            assert np.abs(ep.images["front"][t].astype(int) - recorded).mean() < 8.0
            assert np.abs(ep.images["wrist"][t].astype(int) - recorded[::-1]).mean() < 8.0


def test_crisp_cartesian_delta_actions_are_integrated_from_the_first_measured_pose(tmp_path):
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(9)
    frames = 10
    step_xyz, step_euler = rng.normal(0, 0.006, (frames, 3)), rng.normal(0, 0.02, (frames, 3))
    start = Rotation.from_euler("xyz", [np.pi, 0.1, -0.2])
    target_xyz = np.array([0.45, 0.0, 0.3]) + np.cumsum(step_xyz, axis=0)
    target_rot = [start]
    for e in step_euler:  # CRISP: target orientation = delta * previous target orientation
        target_rot.append(Rotation.from_euler("xyz", e) * target_rot[-1])
    measured_xyz = np.concatenate([[[0.45, 0.0, 0.3]], target_xyz[:-1] + rng.normal(0, 0.003, (frames - 1, 3))])
    measured_rot = [start] + [r * Rotation.from_rotvec(rng.normal(0, 0.01, 3)) for r in target_rot[1:-1]]
    opened = (np.arange(frames) < 6).astype(float)
    state = np.concatenate([measured_xyz, [r.as_euler("xyz") for r in measured_rot], 1.0 - opened[:, None]], axis=1)
    action = np.concatenate([step_xyz, step_euler, opened[:, None]], axis=1)
    names = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    root = write_lerobot(tmp_path / "crisp", [{"state": state, "action": action}], names, names)
    summary = import_lerobot(root, tmp_path / "bags", progress=False)
    assert "delta" in summary["action"] and summary["gripper"] == "open-is-1"
    back = read_episode(next((tmp_path / "bags").iterdir()))
    pos, quat = spaces.vector_to_pose(back.actions[:, :6].astype(np.float64))
    assert np.allclose(pos, target_xyz, atol=1e-6)
    assert np.all(spaces.quat_angle_between(quat, [r.as_quat() for r in target_rot[1:]]) < 1e-5)


def test_crisp_joint_space_delta_actions_are_integrated_through_fr3_kinematics(tmp_path):
    from mambavla.data.fr3_kinematics import forward_kinematics

    rng = np.random.default_rng(5)
    eps = []
    for frames in (9, 7):
        steps = rng.normal(0, 0.02, (frames, 7))
        target = HOME_JOINTS + np.cumsum(steps, axis=0)  # each delta moves the previous target
        lag = rng.normal(0, 0.01, (frames - 1, 7))  # the arm tracks its target with an error
        joints = np.concatenate([HOME_JOINTS[None], target[:-1] + lag])  # measured
        gripper_closed = (np.arange(frames) >= frames // 2).astype(float)
        eps.append({"state": np.concatenate([joints, gripper_closed[:, None]], axis=1), "joints": joints,
                    "action": np.concatenate([steps, 1.0 - gripper_closed[:, None]], axis=1), "target": target})
    root = write_lerobot(tmp_path / "crisp_joint", eps, [*(f"joint_{i}" for i in range(7)), "gripper"],
                         [*(f"joint_{i}" for i in range(7)), "gripper"])
    summary = import_lerobot(root, tmp_path / "bags", image_format="raw", progress=False)
    assert "delta" in summary["action"] and "kinematics" in summary["state"] and summary["gripper"] == "open-is-1"
    for path, ep in zip(sorted((tmp_path / "bags").iterdir()), eps):
        back = read_episode(path)
        assert set(back.images) == {"primary", "wrist_camera"}
        measured_pos, measured_quat = forward_kinematics(ep["joints"])
        pos, quat = spaces.vector_to_pose(back.proprio[:, :6].astype(np.float64))
        assert np.allclose(pos, measured_pos, atol=1e-6)
        target_pos, target_quat = forward_kinematics(ep["target"])
        pos, quat = spaces.vector_to_pose(back.actions[:, :6].astype(np.float64))
        assert np.allclose(pos, target_pos, atol=1e-6)
        assert np.all(spaces.quat_angle_between(quat, target_quat) < 1e-5)
        assert np.allclose(back.joint_positions[:, :7], ep["joints"], atol=1e-6)


def test_quaternion_state_base_frame_rotation_vectors_and_gripper_width_import(tmp_path):
    rng = np.random.default_rng(10)
    ep = crisp_episode(rng, 8)
    from scipy.spatial.transform import Rotation

    quat = ep["quat"]
    width = np.where(ep["opened"] > 0, 0.08, 0.02)
    state = np.concatenate([ep["xyz"][:-1], quat[:-1], width[:, None]], axis=1)
    rotvec = Rotation.from_quat(quat[1:]).as_rotvec()
    action = np.concatenate([ep["xyz"][1:], rotvec, 1.0 - ep["opened"][:, None]], axis=1)  # 1 = closed
    root = write_lerobot(tmp_path / "other", [{"state": state, "action": action}],
                         ["ee_x", "ee_y", "ee_z", "qx", "qy", "qz", "qw", "gripper_width"],
                         ["x", "y", "z", "rx", "ry", "rz", "gripper"])
    summary = import_lerobot(root, tmp_path / "bags", progress=False)
    assert summary["gripper"] == "closed-is-1"
    back = read_episode(next((tmp_path / "bags").iterdir()))
    pos, q = spaces.vector_to_pose(back.proprio[:, :6].astype(np.float64))
    assert np.allclose(pos, ep["xyz"][:-1], atol=1e-6) and np.all(spaces.quat_angle_between(q, quat[:-1]) < 1e-5)
    assert np.allclose(back.proprio[:, 6], width / 2)
    pos, q = spaces.vector_to_pose(back.actions[:, :6].astype(np.float64))
    assert np.allclose(pos, ep["xyz"][1:], atol=1e-6) and np.all(spaces.quat_angle_between(q, quat[1:]) < 1e-5)
    assert back.actions[:, 6].tolist() == (1.0 - ep["opened"]).tolist()


def test_episode_selection_imports_only_the_chosen_episodes(tmp_path):
    rng = np.random.default_rng(6)
    eps = [crisp_episode(rng, 6) for _ in range(3)]
    names = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    root = write_lerobot(tmp_path / "crisp", eps, names, names)
    summary = import_lerobot(root, tmp_path / "bags", episodes=["0,2"], gripper="open-is-1", progress=False)
    assert summary["episodes"] == 2 and [p[-6:] for p in summary["bags"]] == ["000000", "000002"]
    with pytest.raises(LeRobotError, match="episodes 0..2"):
        import_lerobot(root, tmp_path / "more", episodes=["5"], progress=False)


def test_a_folder_without_meta_info_json_is_refused_with_the_layout_it_needs(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(LeRobotError, match=r"meta/info.json is missing.*not a LeRobotDataset root"):
        import_lerobot(tmp_path, tmp_path / "bags", progress=False)


def test_a_v2_dataset_is_refused_with_the_conversion_command(tmp_path):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta/info.json").write_text(json.dumps({"codebase_version": "v2.1", "fps": 30, "features": {}}))
    with pytest.raises(LeRobotError, match="convert_dataset_v21_to_v30"):
        import_lerobot(tmp_path, tmp_path / "bags", progress=False)


def test_an_unknown_feature_key_in_the_map_names_the_features_there_are(exported, tmp_path):
    out, _ = exported
    with pytest.raises(LeRobotError, match=r"no feature 'observation.images.top'.*observation.images.front"):
        import_lerobot(out, tmp_path / "bags", mapping=["front=observation.images.top"], progress=False)
    with pytest.raises(LeRobotError, match="a camera must be an RGB video or image feature"):
        import_lerobot(out, tmp_path / "bags", mapping=["front=observation.state"], progress=False)


def test_mismatched_episode_lengths_are_refused_naming_the_file(tmp_path):
    rng = np.random.default_rng(7)
    names = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    root = write_lerobot(tmp_path / "crisp", [crisp_episode(rng, 6)], names, names, length_override=8)
    with pytest.raises(LeRobotError, match=r"file-000.parquet: episode 0 has 6 frames but meta/episodes says length 8"):
        import_lerobot(root, tmp_path / "bags", progress=False)


def test_a_video_shorter_than_its_episode_is_refused(exported, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    out, _ = exported
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    path = broken / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    column = "videos/observation.images.front/from_timestamp"
    table = table.set_column(table.column_names.index(column), column, [[0.0, 14 / FPS]])  # 2 frames past the end
    pq.write_table(table, path)
    with pytest.raises(LeRobotError, match=r"episode 1 has 9 frames in the data but only 7 in the video"):
        import_lerobot(broken, tmp_path / "bags", progress=False)


def test_unnamed_state_dimensions_are_refused_with_how_to_name_them(tmp_path):
    rng = np.random.default_rng(8)
    names = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    root = write_lerobot(tmp_path / "crisp", [crisp_episode(rng, 5)], names, names)
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["observation.state"]["names"] = None
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(LeRobotError, match=r"'observation.state'.*no per-dimension names.*\['names'\]"):
        import_lerobot(root, tmp_path / "bags", progress=False)


def test_a_gripper_convention_the_data_cannot_tell_asks_for_the_flag(tmp_path):
    rng = np.random.default_rng(11)
    eps = [crisp_episode(rng, 6) for _ in range(2)]
    eps[1]["action"][:, 6] = 1.0 - eps[1]["action"][:, 6]  # one episode starts closed, the other open
    names = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    root = write_lerobot(tmp_path / "crisp", eps, names, names)
    with pytest.raises(LeRobotError, match=r"cannot tell the action gripper convention.*--gripper open-is-1"):
        import_lerobot(root, tmp_path / "bags", progress=False)
    assert import_lerobot(root, tmp_path / "bags", gripper="open-is-1", progress=False)["episodes"] == 2


def test_export_refuses_a_non_empty_output_folder(ours, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(LeRobotError, match="not empty"):
        export_lerobot([ours], tmp_path, progress=False)


def test_episodes_recorded_at_one_rate_export_together_whatever_their_measured_intervals(tmp_path):
    def bag(path, dt, frames=4):
        with EpisodeWriter(path, ("front",), SIZE, dt, {}) as w:
            w.write_instruction(0.0, "lift the red cube")
            pos, quat = spaces.vector_to_pose(np.array([0.45, 0.0, 0.3, 0.0, 0.0, 0.0]))
            for t in range(frames):
                w.write_frame(t * dt, {"front": scene(t, 0)}, HOME_JOINTS, np.full(2, 0.04), pos, quat,
                              np.zeros(7))

    # the recorder's dt is the median interval of the camera's stamps: microseconds apart from episode to episode
    bag(tmp_path / "bags/episode_000000", 1 / FPS)
    bag(tmp_path / "bags/episode_000001", 1 / FPS + 3e-6)
    summary = export_lerobot([tmp_path / "bags"], tmp_path / "lr", codec="mpeg4", progress=False)
    assert summary["episodes"] == 2 and summary["fps"] == FPS
    bag(tmp_path / "bags/episode_000002", 2 / FPS)
    with pytest.raises(LeRobotError, match=r"episode_000002: cameras \['front'\].*10 fps.*20 fps"):
        export_lerobot([tmp_path / "bags"], tmp_path / "lr2", codec="mpeg4", progress=False)


def test_a_signed_gripper_reads_alike_in_every_episode_whatever_range_one_episode_covers(tmp_path):
    rng = np.random.default_rng(12)
    eps = [crisp_episode(rng, 6), crisp_episode(rng, 6)]
    eps[0]["action"][:, 6] = 2 * eps[0]["opened"] - 1  # [-1, 1], 1 = open: shut fully
    eps[1]["action"][:, 6] = eps[1]["opened"]  # the same convention, closed only halfway (0) in this episode
    names = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    root = write_lerobot(tmp_path / "signed", eps, names, names)
    summary = import_lerobot(root, tmp_path / "bags", progress=False)
    assert summary["gripper"] == "open-is-1"
    first, second = (read_episode(p) for p in sorted((tmp_path / "bags").iterdir()))
    assert first.actions[:, 6].tolist() == [0.0] * 3 + [1.0] * 3
    assert second.actions[:, 6].tolist() == [0.0] * 3 + [0.5] * 3  # halfway, not shut


def test_a_non_finite_state_or_action_is_refused_naming_the_episode_quantity_and_frame(tmp_path):
    rng = np.random.default_rng(13)
    names = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    for column, what in ((("state", 6), "finger opening"), (("action", 2), "action")):
        eps = [crisp_episode(rng, 6), crisp_episode(rng, 6)]
        eps[1][column[0]][2, column[1]] = np.nan
        root = write_lerobot(tmp_path / what.replace(" ", "_"), eps, names, names)
        with pytest.raises(LeRobotError, match=rf"episode 1: non-finite {what} in 1 of 6 frames \(first: frame 2\)"):
            import_lerobot(root, tmp_path / f"bags_{column[0]}", progress=False)


@pytest.mark.parametrize("fps", [0, -10, 29.97, "30"])
def test_an_fps_that_is_not_a_whole_positive_number_is_refused(tmp_path, fps):
    rng = np.random.default_rng(14)
    names = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    root = write_lerobot(tmp_path / "crisp", [crisp_episode(rng, 4)], names, names)
    info = json.loads((root / "meta/info.json").read_text())
    info["fps"] = fps
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(LeRobotError, match=r"info.json: fps .*whole number of frames per second"):
        import_lerobot(root, tmp_path / "bags", progress=False)


def test_episode_metadata_without_the_data_file_columns_is_refused_naming_them(tmp_path):
    import pyarrow.parquet as pq

    rng = np.random.default_rng(15)
    names = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    root = write_lerobot(tmp_path / "crisp", [crisp_episode(rng, 4)], names, names)
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["data/file_index"]), path)
    with pytest.raises(LeRobotError, match=r"file-000.parquet: no column data/file_index"):
        import_lerobot(root, tmp_path / "bags", progress=False)


def test_an_import_stopped_mid_episode_leaves_no_bag_of_that_episode(tmp_path, monkeypatch):
    rng = np.random.default_rng(16)
    names = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    root = write_lerobot(tmp_path / "crisp", [crisp_episode(rng, 6), crisp_episode(rng, 6)], names, names)
    written, write_frame = [], EpisodeWriter.write_frame

    def interrupted(self, *args, **kwargs):
        if len(written) == 11:  # the last frame of the second episode: its first five would read as an episode
            raise KeyboardInterrupt
        written.append(1)
        return write_frame(self, *args, **kwargs)

    monkeypatch.setattr(EpisodeWriter, "write_frame", interrupted)
    with pytest.raises(KeyboardInterrupt):
        import_lerobot(root, tmp_path / "bags", image_format="raw", progress=False)
    assert [p.name for p in (tmp_path / "bags").iterdir()] == ["crisp_episode_000000"]
    assert len(read_episode(tmp_path / "bags/crisp_episode_000000")) == 6
