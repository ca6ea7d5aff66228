"""Stream-mode training scores each frame's chunk from the state after that frame, in one parallel scan.
The streaming runtime must produce, frame by frame, the same chunks from the same segment and noise."""

import numpy as np
import pytest
import torch

from mambavla.model.config import preset
from mambavla.model.mamba2 import Mamba2Mixer
from mambavla.model.modeling_mambavla import MambaVLA
from mambavla.runtime import PolicyRuntime

INSTRUCTIONS = ["lift the red cube", "put the green cube onto the yellow plate"]


def _segment(config, batch: int, frames: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h, w = config.image_size
    images = {c: torch.randint(0, 256, (batch, frames, 3, h, w), generator=g).float() for c in config.cameras}
    proprio = torch.tensor([0.5, 0.0, 0.2, 0.0, 0.0, 0.0, 0.04, 0.04]) + 0.05 * torch.randn(
        batch, frames, 8, generator=g
    )
    return images, proprio


def test_mixer_frame_states_match_streaming_one_frame_at_a_time():
    torch.manual_seed(0)
    mixer = Mamba2Mixer(32, d_state=8, headdim=16, chunk_len=8)
    start, n, T = 5, 7, 4
    u = torch.randn(2, start + n * T + 3, 32)  # 3 trailing tokens after the last whole frame are ignored
    _, at = mixer(u, frames=(start, n))
    _, state = mixer(u[:, :start])
    for t in range(T):
        _, state = mixer(u[:, start + n * t : start + n * (t + 1)], state)
        torch.testing.assert_close(at.ssm[:, t], state.ssm, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(at.conv[:, t], state.conv, atol=1e-6, rtol=0)


def test_streaming_runtime_matches_stream_training_forward_per_frame():
    torch.manual_seed(0)
    config = preset("tiny")
    model = MambaVLA(config).eval()
    T = 5
    images, proprio = _segment(config, len(INSTRUCTIONS), T)
    with torch.no_grad():
        prompt, mask = model.encode_instruction(INSTRUCTIONS)  # left-padded: the instructions differ in length
        assert not mask.all()
        states, task = model.stream_states(prompt, mask, images, proprio)  # per layer, batch B * T
    for b, text in enumerate(INSTRUCTIONS):
        runtime = PolicyRuntime(model, seed=7)
        runtime.set_instruction(text)
        noise = torch.Generator().manual_seed(7)  # the runtime draws one noise chunk per step from its seed
        for t in range(T):
            obs = {
                "images": {c: images[c][b, t].permute(1, 2, 0).numpy().astype(np.uint8) for c in config.cameras},
                "proprio": proprio[b, t].numpy(),
            }
            chunk = runtime.step(obs)
            frame_state = [type(s)(*(x[b * T + t : b * T + t + 1] for x in s)) for s in states]
            x = torch.randn((1, config.chunk_size, config.action_dim), generator=noise)
            with torch.no_grad():
                expected = model.normalizer.unnormalize_actions(
                    model.sample_actions(frame_state, x, task=task[b * T + t : b * T + t + 1])
                )[0].numpy()
            np.testing.assert_allclose(chunk.actions, expected, atol=1e-4, rtol=1e-4, err_msg=f"segment {b}, frame {t}")


def test_stream_loss_trains_and_rejects_the_transformer_fusion():
    torch.manual_seed(0)
    config = preset("tiny")
    model = MambaVLA(config)
    images, proprio = _segment(config, 2, 3)
    batch = {
        "instruction": INSTRUCTIONS,
        "images": images,
        "proprio": proprio,
        "actions": proprio[..., None, :7].expand(-1, -1, config.chunk_size, -1).clone(),
        "action_pad": torch.zeros(2, 3, config.chunk_size, dtype=torch.bool),
    }
    loss = model.stream_loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and model.fusion.layers[0].mixer.in_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="mamba fusion"):
        MambaVLA(config.replace(fusion="transformer")).stream_loss(batch)


def test_the_transformer_fusion_trains_in_window_mode_with_the_loss_it_has_without_gradients():
    # the flow head continues the context's KV cache; in training that must not write into tensors
    # autograd saved (it did: "modified by an inplace operation" on the first backward)
    torch.manual_seed(0)
    config = preset("tiny").replace(fusion="transformer", history_mode="window", history_frames=2)
    model = MambaVLA(config)
    images, proprio = _segment(config, 2, 2)
    batch = {
        "instruction": INSTRUCTIONS,
        "images": images,
        "proprio": proprio,
        "actions": proprio[:, -1, None, :7].expand(-1, config.chunk_size, -1).clone(),
    }
    with torch.no_grad():
        torch.manual_seed(5)  # flow times come from the global generator
        expected = model.loss(batch, torch.Generator().manual_seed(5))
    torch.manual_seed(5)
    loss = model.loss(batch, torch.Generator().manual_seed(5))
    loss.backward()
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=1e-5)
    assert all(torch.isfinite(p.grad).all() for p in model.fusion.parameters() if p.grad is not None)
    assert model.fusion.layers[0].qkv.weight.grad.abs().sum() > 0
