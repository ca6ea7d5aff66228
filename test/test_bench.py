"""`mambavla bench` on the CPU: every row it promises is there, computed (timings, the ONNX Runtime row with
its streamed parity against torch, the history sweep, and step_batch on both backends)."""

import json

import pytest

from mambavla.cli import main

pytest.importorskip("onnxruntime")


def test_bench_reports_both_fusions_the_onnx_row_the_history_sweep_and_step_batch(capsys):
    import torch

    threads = torch.get_num_threads()
    assert (
        main(
            [
                "bench",
                "--preset",
                "tiny",
                "--history",
                "1",
                "4",
                "--batch",
                "1",
                "3",
                "--steps",
                "3",
                "--warmup",
                "1",
                "--sweep-steps",
                "2",
                "--batch-steps",
                "2",
                "--parity-steps",
                "5",
                "--threads",
                "1",
                "--camera-size",
                "48x64",
                "--json",
            ]
        )
        == 0
    )
    assert torch.is_grad_enabled() and torch.get_num_threads() == threads  # no global state left behind for later tests
    result = json.loads(capsys.readouterr().out)
    assert result["device"] == "cpu" and result["dtype"] == "float32" and result["threads"] == 1
    assert result["camera_size"] == [48, 64]  # frames the runtime resized (tiny sees 32x32)
    assert set(result["fusions"]) == {"mamba", "transformer"}
    for fusion, entry in result["fusions"].items():
        step = entry["eager"]["step_ms"]
        assert step["n"] == 3 and 0 < step["p50"] <= step["p99"]
        assert set(entry["eager"]["split_ms_p50"]) == {"vision", "fusion", "flow"}
        assert [p["history_frames"] for p in entry["history_sweep"]["points"]] == [1, 4]
        assert entry["history_sweep"]["points"][1]["tokens_in_context"] == 4 * 9  # tiny: 2 cameras x 2x2 grid + proprio
        assert "cuda_graph" not in entry  # no graph on the CPU
    onnx = result["fusions"]["mamba"]["onnx"]  # the export is stream-mode Mamba only
    assert "onnx" not in result["fusions"]["transformer"]
    assert (
        onnx["provider"] == "CPUExecutionProvider" and "cuda_graph" not in onnx
    )  # ORT's graphs need its CUDA provider
    assert (
        onnx["parity"]["steps"] == 5
        and onnx["parity"]["max_abs_diff"] <= 1e-3
        and onnx["parity"]["cuda_graph"] is False
    )
    assert onnx["step_ms"]["n"] == 3 and onnx["p50_vs_best_torch"] == pytest.approx(
        onnx["step_ms"]["p50"] / result["fusions"]["mamba"]["eager"]["step_ms"]["p50"]
    )
    sweeps = {(s["backend"], s["mode"]): s["points"] for s in result["step_batch"]}
    assert set(sweeps) == {("torch", "eager"), ("onnx", "onnx")}
    for points in sweeps.values():
        assert [p["streams"] for p in points] == [1, 3]
        for p in points:
            assert p["stream_steps_per_s"] == pytest.approx(p["streams"] / p["batch_ms"]["p50"] * 1e3)


@pytest.mark.parametrize("size", ["480", "480x", "0x640", "480x640x3", "9000x10", "axb"])
def test_bench_commands_refuse_a_malformed_camera_size(size, capsys):
    for command in ("bench", "bench-ros"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--camera-size", size])
        assert exit_info.value.code == 2
        assert "expected HxW with each side 1..8192 px" in capsys.readouterr().err
