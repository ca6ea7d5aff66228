"""The three levels of recurrent-state caching give exactly what a full recompute gives."""

import numpy as np
import pytest
import torch

from mambavla.model.config import PRESETS, preset
from mambavla.model.fusion import build_fusion
from mambavla.model.modeling_mambavla import MambaVLA
from mambavla.runtime import PolicyRuntime

FUSIONS = ("mamba", "transformer")


def _model(fusion: str) -> MambaVLA:
    torch.manual_seed(0)
    model = MambaVLA(preset("tiny").replace(fusion=fusion)).eval()
    with torch.no_grad():  # FiLM and other zero-initialised layers must matter in these checks
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _frames(model: MambaVLA, k: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w = model.config.image_size
    out = []
    for _ in range(k):
        images = {c: torch.randint(0, 256, (1, 3, h, w), generator=g).float() for c in model.config.cameras}
        task = torch.randn(1, model.config.d_model, generator=g)  # the task vector, which FiLM feeds to the encoder
        out.append(model.encode_frame(images, torch.randn(1, model.config.proprio_dim, generator=g), task))
    return out


@pytest.mark.parametrize("fusion", FUSIONS)
@torch.no_grad()
def test_streaming_steps_match_one_pass_over_concatenated_sequence(fusion):
    model = _model(fusion)
    prompt, _ = model.encode_instruction(["put the red cube on the blue plate"])
    frames = _frames(model, 5)
    state = model.condition(prompt)
    for f in frames:
        state = model.condition(f, state)
    full = model.condition(torch.cat([prompt, *frames], dim=1))
    x_t, t = torch.randn(1, model.config.chunk_size, model.config.action_dim), torch.tensor([0.6])
    assert (model.velocity(x_t, t, state) - model.velocity(x_t, t, full)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("fusion", FUSIONS)
@torch.no_grad()
def test_flow_step_from_cached_context_matches_recompute_from_scratch(fusion):
    model = _model(fusion)
    prompt, _ = model.encode_instruction(["lift the green cube"])
    context = torch.cat([prompt, *_frames(model, 2)], dim=1)
    state = model.condition(context)
    for t in (1.0, 0.5, 0.1):
        x_t, tt = torch.randn(1, model.config.chunk_size, model.config.action_dim), torch.tensor([t])
        cached = model.velocity(x_t, tt, state)
        tokens, cond = model.action_tokens(x_t, tt)
        hidden, _ = model.fusion(torch.cat([context, tokens], dim=1), cond=cond, cond_start=context.shape[1])
        scratch = model.action_out(model.norm_out(hidden[:, context.shape[1] :]))
        assert (cached - scratch).abs().max().item() <= 1e-4
    again = model.velocity(x_t, tt, state)
    assert torch.equal(again, cached)  # velocity never mutates the cached context state


@pytest.mark.parametrize("fusion", FUSIONS)
@torch.no_grad()
def test_padded_batch_instruction_matches_single_instruction(fusion):
    model = _model(fusion)
    texts = ["push the blue cube to the left side of the table please", "lift red"]
    batch_tokens, mask = model.encode_instruction(texts)
    frame = _frames(model, 1)[0]
    batch_state = model.condition(
        torch.cat([batch_tokens, frame.expand(2, -1, -1)], 1),
        mask=torch.cat([mask, torch.ones(2, frame.shape[1], dtype=torch.bool)], 1),
    )
    x_t, t = torch.randn(2, model.config.chunk_size, model.config.action_dim), torch.tensor([0.3, 0.3])
    v_batch = model.velocity(x_t, t, batch_state)
    for i, text in enumerate(texts):
        single, _ = model.encode_instruction([text])
        state = model.condition(torch.cat([single, frame], 1))
        assert (model.velocity(x_t[i : i + 1], t[i : i + 1], state) - v_batch[i : i + 1]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("fusion", FUSIONS)
def test_runtime_caches_equal_full_recompute(fusion):
    model = _model(fusion)
    runtime = PolicyRuntime(model, seed=3)
    runtime.set_instruction("place the green cube on the red plate")
    rng = np.random.default_rng(0)
    h, w = runtime.image_size
    observations = [
        {
            "images": {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in runtime.camera_names},
            "proprio": rng.normal(size=8).astype(np.float32),
            "stamp": float(i),
        }
        for i in range(3)
    ]
    chunks = [runtime.step(o) for o in observations]

    with torch.no_grad():  # from scratch: one pass over everything, the same noise sequence
        prompt, mask = model.encode_instruction(["place the green cube on the red plate"])
        task = model.task_vector(prompt, mask)
        frames = [
            model.encode_frame(
                {c: torch.from_numpy(o["images"][c]).permute(2, 0, 1)[None].float() for c in runtime.camera_names},
                torch.from_numpy(o["proprio"])[None],
                task,
            )
            for o in observations
        ]
        g = torch.Generator().manual_seed(3)
        for k, chunk in enumerate(chunks):
            state = model.condition(torch.cat([prompt, *frames[: k + 1]], dim=1))
            noise = torch.randn((1, model.config.chunk_size, model.config.action_dim), generator=g)
            expected = model.normalizer.unnormalize_actions(model.sample_actions(state, noise, task=task))[0].numpy()
            np.testing.assert_allclose(chunk.actions, expected, atol=1e-4)


def test_transformer_fusion_parameter_count_within_ten_percent_of_mamba():
    for name in PRESETS:
        counts = {}
        for fusion in FUSIONS:
            counts[fusion] = sum(p.numel() for p in build_fusion(preset(name).replace(fusion=fusion)).parameters())
        assert abs(counts["transformer"] - counts["mamba"]) / counts["mamba"] <= 0.10, (name, counts)


@torch.no_grad()
def test_static_kv_cache_streams_and_samples_as_the_growing_cache():
    """The Transformer's capturable cache (fixed capacity, device-side length) gives the same context and
    velocities as the growing one, and a velocity call leaves the context's length alone."""
    from mambavla.model.fusion import StaticKVCache

    model = _model("transformer")
    prompt, _ = model.encode_instruction(["put the red cube on the blue plate"])
    frames = _frames(model, 4)
    dynamic = model.condition(prompt)
    static = [StaticKVCache.empty_like(s, 200) for s in dynamic]
    for s, d in zip(static, dynamic):
        s.load(d)
    for f in frames:
        dynamic = model.condition(f, dynamic)
        static = model.condition(f, static)
    assert [int(s.length) for s in static] == [d.length for d in dynamic]
    x_t = torch.randn(1, model.config.chunk_size, model.config.action_dim)
    for t in (0.9, 0.3):
        tt = torch.tensor([t])
        np.testing.assert_allclose(
            model.velocity(x_t, tt, static).numpy(), model.velocity(x_t, tt, dynamic).numpy(), atol=1e-5
        )
    assert [int(s.length) for s in static] == [d.length for d in dynamic]  # the action tokens were not kept
    with pytest.raises(ValueError, match="do not fit"):
        StaticKVCache.empty_like(dynamic[0], 8).load(dynamic[0])


@pytest.mark.parametrize("fusion", FUSIONS)
def test_sampling_with_every_flow_steps_modulation_up_front_is_the_velocity_loop(fusion):
    # sample_actions projects the time and task conditions of all flow steps at once (flow_modulations); it
    # must integrate the same velocity as training's velocity(x_t, t, state, task), one step at a time
    model = _model(fusion)
    g = torch.Generator().manual_seed(1)
    d, steps = model.config.d_model, model.config.flow_steps
    with torch.no_grad():
        tokens = torch.randn(2, 7, d, generator=g)
        state = model.condition(tokens)
        task = torch.randn(2, d, generator=g)
        noise = torch.randn((2, model.config.chunk_size, model.config.action_dim), generator=g)
        x = noise
        for i in range(steps):
            x = x - model.velocity(x, torch.full((2,), 1.0 - i / steps), state, task) / steps
        sampled = model.sample_actions(state, noise, task=task)
        untasked = model.sample_actions(state, noise)
    assert (sampled - x).abs().max().item() <= 1e-5
    assert (untasked - sampled).abs().max().item() > 1e-3  # the task term is in the modulation
    with pytest.raises(ValueError, match="flow time"):
        model.velocity(noise, None, state, task)  # neither t nor a modulation
