"""Dataset windowing, delta actions, normalisation statistics, decode cache, LIBERO import."""

import dataclasses
import json
import os

import numpy as np
import pytest

from mambavla import spaces
from mambavla.data import EpisodeDataset, EpisodeWriter, compute_norm_stats, import_libero, read_episode

SIZE = (6, 7)


def write_episode(path, frames, task="lift", success=True, seed=0, compression="message"):
    """Synthetic episode: the hand rises 1 cm per frame and turns a little; the action is the next pose."""
    rng = np.random.default_rng(seed)
    vectors = np.stack([[0.5, 0.01 * seed, 0.2 + 0.01 * t, 0.0, 0.0, 0.02 * t] for t in range(frames + 1)])
    meta = {"task": task, "seed": seed, "success": success}
    with EpisodeWriter(path, ("front", "wrist"), SIZE, 0.05, meta, compression=compression) as w:
        w.write_instruction(0.0, f"{task} the red cube")
        for t in range(frames):
            pos, quat = spaces.vector_to_pose(vectors[t])
            images = {c: rng.integers(0, 255, (*SIZE, 3), dtype=np.uint8) for c in ("front", "wrist")}
            action = np.concatenate([vectors[t + 1], [float(t >= frames // 2)]])
            w.write_frame(
                0.05 * t, images, np.zeros(7), np.array([0.04 - 0.001 * t, 0.04 - 0.001 * t]), pos, quat, action
            )
    return path


@pytest.fixture()
def demos(tmp_path):
    write_episode(tmp_path / "episode_0", 10, seed=0)
    write_episode(tmp_path / "episode_1", 7, task="place", success=False, seed=1)
    return tmp_path


def test_samples_carry_the_future_action_chunk_padded_at_the_end(demos):
    ds = EpisodeDataset(demos, chunk=4)
    assert len(ds) == 17 and ds.cameras == ("front", "wrist") and ds.image_size == SIZE
    ep = read_episode(demos / "episode_0")
    s = ds[2]
    assert set(s) == {"images", "proprio", "instruction", "actions", "action_mode", "action_pad"}
    assert s["images"]["front"].shape == (*SIZE, 3) and s["images"]["front"].dtype == np.uint8
    assert np.array_equal(s["images"]["wrist"], ep.images["wrist"][2])
    assert s["proprio"].dtype == np.float32 and np.allclose(s["proprio"], ep.proprio[2])
    assert s["actions"].shape == (4, 7) and s["actions"].dtype == np.float32
    assert np.allclose(s["actions"], ep.actions[2:6])
    assert s["instruction"] == "lift the red cube" and s["action_mode"] == "absolute"
    last = ds[9]  # last frame of episode 0
    assert last["action_pad"].tolist() == [False, True, True, True]
    assert np.allclose(last["actions"], ep.actions[9])  # repeated
    assert ds[10]["instruction"] == "place the red cube"  # first frame of episode 1
    assert ds.locate(-1) == (1, 6)


def test_delta_actions_are_relative_to_the_observed_pose(demos):
    absolute = EpisodeDataset(demos, chunk=3)
    delta = EpisodeDataset(demos, chunk=3, action_mode="delta")
    a, d = absolute[4], delta[4]
    assert d["action_mode"] == "delta"
    assert np.allclose(d["actions"][:, :3], a["actions"][:, :3] - a["proprio"][:3], atol=1e-6)
    assert np.allclose(d["actions"][0, :3], [0.0, 0.0, 0.01], atol=1e-6)  # one frame ahead: 1 cm up
    obs_pos, obs_quat = spaces.vector_to_pose(a["proprio"][:6].astype(np.float64))
    pos, quat = spaces.delta_to_absolute(d["actions"][:, :6].astype(np.float64), obs_pos, obs_quat)
    assert np.allclose(spaces.pose_to_vector(pos, quat), a["actions"][:, :6], atol=1e-5)
    assert np.array_equal(d["actions"][:, 6], a["actions"][:, 6])


def test_norm_stats_match_the_data_and_serialise(demos):
    ds = EpisodeDataset(demos, chunk=4)
    stats = json.loads(json.dumps(compute_norm_stats(ds)))
    assert set(stats) == {"proprio", "actions"}
    proprio = np.concatenate([e.proprio for e in ds.episodes])
    actions = np.concatenate([e.actions for e in ds.episodes])
    assert np.allclose(stats["proprio"]["mean"], proprio.mean(0), atol=1e-6)
    assert np.allclose(stats["actions"]["max"], actions.max(0), atol=1e-6)
    scale = np.maximum(np.abs(actions[:, :3].mean(0)), np.ptp(actions[:, :3], axis=0))
    assert np.allclose(stats["actions"]["std"][:3], np.maximum(actions[:, :3].std(0), 0.01 * scale), atol=1e-6)
    assert stats["actions"]["std"][0] >= 0.01 * abs(actions[:, 0].mean())  # x is constant: floored at 1% of its scale
    assert all(len(v) == 8 for v in stats["proprio"].values()) and all(len(v) == 7 for v in stats["actions"].values())
    delta = compute_norm_stats(EpisodeDataset(demos, chunk=4, action_mode="delta"))
    assert delta["actions"]["max"][2] == pytest.approx(0.04, abs=1e-5)  # four frames ahead at 1 cm each
    assert delta["actions"]["min"][2] == pytest.approx(0.01, abs=1e-5)


def test_decode_cache_is_reused_and_invalidated_by_a_changed_bag(demos):
    first = EpisodeDataset(demos, chunk=2)
    assert first.decoded == 2
    second = EpisodeDataset(demos, chunk=2)
    assert second.decoded == 0
    assert np.array_equal(first[5]["images"]["front"], second[5]["images"]["front"])
    assert np.array_equal(first[5]["actions"], second[5]["actions"])
    mcap = next((demos / "episode_1").glob("*.mcap"))
    os.utime(mcap, ns=(mcap.stat().st_atime_ns, mcap.stat().st_mtime_ns + 10**9))
    assert EpisodeDataset(demos, chunk=2).decoded == 1
    assert EpisodeDataset(demos, chunk=2, use_cache=False).decoded == 2


def test_decode_cache_is_invalidated_by_every_reading_option(demos):
    from mambavla.data.bags import ReadOptions

    assert EpisodeDataset(demos, chunk=2, verbose=False).decoded == 2
    assert EpisodeDataset(demos, chunk=2, verbose=False, options=ReadOptions()).decoded == 0
    changed = {
        "maps": {"front": "/cameras/front/image_raw"},
        "instruction": "lift",
        "image_size": (4, 4),
        "dt": 0.1,
        "action_lead": 0.2,
        "default_cameras": ("front",),
        "split_gap": 1.0,
    }
    # these bags have no depth: reading them with depth fails, so its key is checked instead
    assert ReadOptions.make(depth=True).key() not in {ReadOptions().key(), ReadOptions.make(split_gap=1.0).key()}
    assert set(changed) | {"depth"} == {f.name for f in dataclasses.fields(ReadOptions)}  # a new option gets a case
    for name, value in changed.items():
        ds = EpisodeDataset(demos, chunk=2, verbose=False, options=ReadOptions.make(**{name: value}))
        assert ds.decoded == 2, name
    assert EpisodeDataset(demos, chunk=2, verbose=False, cameras=("front",)).decoded == 2


def test_summary_reports_tasks_success_and_action_ranges(demos):
    summary = EpisodeDataset(demos).summary()
    assert summary["episodes"] == 2 and summary["frames"] == 17
    assert summary["tasks"] == {"lift": 1, "place": 1} and summary["success_rate"] == 0.5
    assert summary["action_range"]["z"][1] == pytest.approx(0.3, abs=1e-4)
    assert summary["action_range"]["gripper"] == [0.0, 1.0]
    assert EpisodeDataset(demos, successful_only=True, verbose=False).summary()["episodes"] == 1


def test_every_compression_mode_reads_back_the_same_episode(tmp_path):
    episodes = {c: read_episode(write_episode(tmp_path / c, 6, compression=c)) for c in ("none", "message", "file")}
    assert list((tmp_path / "file").glob("*.mcap.zstd")) and list((tmp_path / "message").glob("*.mcap"))
    for ep in episodes.values():
        assert np.array_equal(ep.images["front"], episodes["none"].images["front"])
        assert np.array_equal(ep.actions, episodes["none"].actions)
    assert len(EpisodeDataset(tmp_path, chunk=2)) == 18


def write_libero(path, demos=2, frames=6):
    import h5py

    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["problem_info"] = json.dumps(
            {"problem_name": "libero_tabletop", "language_instruction": "put the bowl on the plate"}
        )
        for d in range(demos):
            g = data.create_group(f"demo_{d}")
            obs = g.create_group("obs")
            image = np.zeros((frames, 8, 8, 3), np.uint8)
            image[:, 0] = 255  # top row white in LIBERO's (upside-down) frame
            obs["agentview_rgb"] = image
            obs["eye_in_hand_rgb"] = rng.integers(0, 255, (frames, 8, 8, 3), dtype=np.uint8)
            ee = np.zeros((frames, 6))
            ee[:, :3] = [0.1, 0.0, 1.0]
            ee[:, 3] = np.pi  # gripper down, as LIBERO reports it (axis-angle about x)
            obs["ee_states"] = ee
            obs["gripper_states"] = np.tile([0.039, -0.039], (frames, 1))
            obs["joint_states"] = np.zeros((frames, 7))
            actions = np.zeros((frames, 7))
            actions[:, 2] = 1.0  # up at full scale
            actions[:, 6] = np.where(np.arange(frames) < 3, -1.0, 1.0)
            g["actions"] = actions


def test_libero_import_yields_the_same_sample_format(tmp_path):
    write_libero(tmp_path / "put_the_bowl_on_the_plate_demo.hdf5")
    paths = import_libero(tmp_path / "put_the_bowl_on_the_plate_demo.hdf5", tmp_path / "bags")
    assert len(paths) == 2
    ds = EpisodeDataset(tmp_path / "bags", chunk=4)
    assert len(ds) == 12 and ds.cameras == ("front", "wrist") and ds.image_size == (8, 8)
    s = ds[0]
    assert s["instruction"] == "put the bowl on the plate"
    assert s["images"]["front"][-1].min() == 255 and s["images"]["front"][0].max() == 0  # flipped upright
    assert np.allclose(s["proprio"][:3], [0.1, 0.0, 1.0]) and np.allclose(s["proprio"][3:6], 0.0, atol=1e-6)
    assert np.allclose(s["proprio"][6:], [0.039, -0.039])
    assert np.allclose(s["actions"][:, :3], [0.1, 0.0, 1.05], atol=1e-6)  # 1.0 * 5 cm above the hand
    assert s["actions"][:, 6].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert ds.episodes[0].meta["source"].endswith("demo_0")


def test_libero_import_rejects_files_without_the_schema(tmp_path):
    import h5py

    from mambavla.data import EpisodeError

    with h5py.File(tmp_path / "bad.hdf5", "w") as f:
        f.create_group("data").create_group("demo_0").create_group("obs")
    with pytest.raises(EpisodeError, match="lacks agentview_rgb"):
        import_libero(tmp_path / "bad.hdf5", tmp_path / "out")
    (tmp_path / "text.hdf5").write_text("nope")
    with pytest.raises(EpisodeError, match="not a readable HDF5"):
        import_libero(tmp_path / "text.hdf5", tmp_path / "out")


def test_contact_sheet_png_has_a_row_per_episode(demos, tmp_path):
    import struct
    import zlib

    from mambavla.data.preview import contact_sheet, write_png

    sheet = contact_sheet([demos / "episode_0", demos / "episode_1", demos / "missing"], frames_per_episode=3)
    assert sheet.shape == (2 * (SIZE[0] + 2), 3 * 2 * SIZE[1], 3)
    data = write_png(tmp_path / "sheet.png", sheet).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (height, width) == sheet.shape[:2]
    idat = data[data.index(b"IDAT") + 4 : data.index(b"IEND") - 8]
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + 3 * width)
    assert np.array_equal(rows[:, 1:].reshape(sheet.shape), sheet)
