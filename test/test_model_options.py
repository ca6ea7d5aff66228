"""Options beyond the default policy: windowed history, depth input, connectors, local transformers towers."""

import numpy as np
import pytest
import torch

from mambavla.model.config import preset
from mambavla.model.language import default_encoder_path
from mambavla.model.modeling_mambavla import MambaVLA
from mambavla.runtime import PolicyRuntime


def _obs(rt, seed, depth=False):
    rng = np.random.default_rng(seed)
    h, w = rt.image_size
    obs = {
        "images": {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in rt.camera_names},
        "proprio": rng.normal(size=8).astype(np.float32),
    }
    if depth:
        obs["depth"] = {c: rng.uniform(0.2, 1.5, (h, w)).astype(np.float32) for c in rt.camera_names}
    return obs


def test_window_mode_rescans_last_frames_from_the_instruction_state():
    torch.manual_seed(0)
    rt = PolicyRuntime.from_preset("tiny", seed=1, history_mode="window", history_frames=2)
    rt.set_instruction("lift the blue cube")
    observations = [_obs(rt, k) for k in range(4)]
    chunks = [rt.step(o) for o in observations]
    model = rt.model
    with torch.no_grad():
        prompt, mask = model.encode_instruction(["lift the blue cube"])
        task = model.task_vector(prompt, mask)
        frames = [
            model.encode_frame(
                {c: torch.from_numpy(o["images"][c]).permute(2, 0, 1)[None].float() for c in rt.camera_names},
                torch.from_numpy(o["proprio"])[None],
                task,
            )
            for o in observations
        ]
        g = torch.Generator().manual_seed(1)
        for k, chunk in enumerate(chunks):
            window = frames[max(0, k - 1) : k + 1]
            window = [window[0]] * (2 - len(window)) + window  # the first frame repeated until the window is full
            state = model.condition(torch.cat([prompt, *window], dim=1))
            noise = torch.randn((1, model.config.chunk_size, model.config.action_dim), generator=g)
            expected = model.normalizer.unnormalize_actions(model.sample_actions(state, noise, task=task))[0].numpy()
            np.testing.assert_allclose(chunk.actions, expected, atol=1e-4)


def test_depth_input_is_used_and_required():
    rt = PolicyRuntime.from_preset("tiny", use_depth=True)
    rt.set_instruction("lift the red cube")
    a = rt.step(_obs(rt, 0, depth=True)).actions
    rt.reset()
    obs = _obs(rt, 0, depth=True)
    obs["depth"] = {c: np.full_like(v, 0.3) for c, v in obs["depth"].items()}
    b = rt.step(obs).actions
    assert not np.allclose(a, b)  # depth changes the action
    with pytest.raises(ValueError, match=r"depth\['front'\]"):
        rt.step(_obs(rt, 0))


def test_film_encoder_sees_the_instruction_and_starts_as_the_plain_encoder():
    torch.manual_seed(0)
    film = MambaVLA(preset("tiny"))
    plain = MambaVLA(preset("tiny").replace(vision_film=False))
    assert film.config.vision_film and not plain.config.vision_film
    missing, unexpected = plain.load_state_dict(film.state_dict(), strict=False)
    assert not missing and unexpected and all(".film." in k for k in unexpected)  # FiLM adds layers, renames none
    h, w = film.config.image_size
    pixels = torch.rand(2, 3, h, w) * 2 - 1
    with torch.no_grad():
        prompt, mask = film.encode_instruction(["lift the red cube", "lift the blue cube"])
        task = film.task_vector(prompt, mask)
        encoder = film.vision["front"]
        np.testing.assert_allclose(
            encoder(pixels, task).numpy(), plain.vision["front"](pixels).numpy(), atol=1e-6
        )  # zero-initialised
        for layer in encoder.film:
            torch.nn.init.normal_(layer.weight, std=0.5)
        red, blue = encoder(pixels[:1].expand(2, -1, -1, -1), task)  # the same image, two instructions
    assert (red - blue).abs().max() > 1e-2  # the instruction changes what the encoder reports
    with pytest.raises(ValueError, match="needs a condition"):
        encoder(pixels)


@pytest.mark.parametrize("connector, scan", [("mlp", "bsm"), ("vss_mlp", "csm"), ("vss_l2", "bsm")])
def test_every_connector_gives_finite_chunks(connector, scan):
    rt = PolicyRuntime.from_preset("tiny", connector=connector, scan=scan)
    rt.set_instruction("push the green cube to the right")
    chunk = rt.step(_obs(rt, 0))
    assert np.isfinite(chunk.actions).all()


def test_local_transformers_towers_load_from_folders(tmp_path):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    tower = SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
    )
    tower.save_pretrained(tmp_path / "siglip")
    config = preset("tiny").replace(
        vision="auto",
        vision_path=str(tmp_path / "siglip"),
        freeze_vision=True,
        vision_film=False,
        language=str(default_encoder_path()),
    )
    model = MambaVLA(config)
    assert model.vision["tower"].width == 32
    assert not any(p.requires_grad for p in model.vision["tower"].tower.parameters())
    rt = PolicyRuntime(model)
    rt.set_instruction("lift the red cube")
    assert np.isfinite(rt.step(_obs(rt, 0)).actions).all()


def test_missing_local_folders_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="language encoder folder not found"):
        MambaVLA(preset("tiny").replace(language=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="vision_path"):
        preset("tiny").replace(vision="auto", vision_film=False)
    with pytest.raises(ValueError, match="vision_film needs the resnet encoder"):
        preset("tiny").replace(vision="siglip")


def _frame_tokens_camera_by_camera(model, images, proprio, task):
    """encode_frame as one pass per camera: the reference for the batched passes."""
    parts = []
    for i, cam in enumerate(model.config.cameras):
        pixels = (images[cam].float() / 255.0 - model.pixel_mean) / model.pixel_std
        if model.config.vision == "resnet":
            grid = model.vision[cam](pixels, task if model.config.vision_film else None)
        else:
            grid = model.vision["tower"](pixels)
        parts.append(model.connector(grid + model.camera_embed[i]))
    parts.append(model.proprio_proj(model.normalizer.proprio(proprio))[:, None])
    return torch.cat(parts, dim=1) + model.task_to_frame(task)[:, None]


@pytest.mark.parametrize("vision", ["resnet", "tower"])
def test_every_camera_in_one_pass_gives_each_cameras_own_tokens(vision, tmp_path):
    config = preset("tiny").replace(connector="vss_mlp", scan="csm")  # a connector that scans each grid
    if vision == "tower":
        from transformers import SiglipVisionConfig, SiglipVisionModel

        SiglipVisionModel(
            SiglipVisionConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=32,
                patch_size=8,
            )
        ).save_pretrained(tmp_path / "siglip")
        config = config.replace(vision="auto", vision_path=str(tmp_path / "siglip"), vision_film=False)
    torch.manual_seed(0)
    model = MambaVLA(config).eval()
    rng = np.random.default_rng(0)
    h, w = config.image_size
    images = {
        c: torch.from_numpy(rng.integers(0, 256, (3, 3, h, w), dtype=np.uint8)) for c in config.cameras
    }  # batch 3
    proprio, task = torch.randn(3, config.proprio_dim), torch.randn(3, config.d_model)
    with torch.no_grad():
        got = model.encode_frame(images, proprio, task)
        expected = _frame_tokens_camera_by_camera(model, images, proprio, task)
    assert got.shape == (3, config.tokens_per_frame, config.d_model)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
