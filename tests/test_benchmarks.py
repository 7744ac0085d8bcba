"""Every benchmark's code path at toy size, so that a change to a stage can never silently break its benchmark
(`make bench` is run by hand; the figures at toy size mean nothing and are not checked)."""

import importlib

import pytest

from benchmarks.__main__ import MODULES

TOY_SIZES = {
    "benchmarks.bench_prompts": {"COUNTS": (20, 40)},
    "benchmarks.bench_finetune": {"STEPS": 2},
    "benchmarks.bench_generate": {"IDENTITIES": 2, "PER_IDENTITY": 2},
    "benchmarks.bench_filter": {"SMALL": 8, "LARGE": 16},
    "benchmarks.bench_dataset": {"SMALL": 20, "LARGE": 40},
    "benchmarks.bench_fid": {"SMALL": 2, "LARGE": 4},
    "benchmarks.bench_reid": {"QUERIES": 40, "GALLERY": 160, "TRAIN_STEPS": 2},
}  # benchmarks.bench_gpu: tests/test_bench_gpu.py runs its rows at toy size


def test_every_benchmark_has_a_toy_size():
    assert set(TOY_SIZES) == set(MODULES)


@pytest.mark.parametrize("module", list(TOY_SIZES))
def test_every_benchmark_runs_at_toy_size(module, monkeypatch, tiny_zoo):
    bench = importlib.import_module(module)
    for name, value in TOY_SIZES[module].items():
        assert hasattr(bench, name), f"{module}.{name}"
        monkeypatch.setattr(bench, name, value)
    rows = bench.run()
    assert rows
    for row in rows:
        assert set(row) == {"benchmark", "measured", "baseline", "ratio", "target"}
        assert all(isinstance(value, str) and value for value in row.values()), row


def test_each_command_replaces_only_its_own_section(tmp_path):
    from benchmarks.__main__ import write_table

    file = tmp_path / "BENCHMARKS.md"
    cpu = [{"benchmark": "a", "measured": "1 s", "baseline": "2 s", "ratio": "2.00", "target": "-"}]
    write_table(cpu, "CPU", file)
    write_table([{**cpu[0], "benchmark": "g"}], "GPU", file)
    write_table([{**cpu[0], "measured": "3 s"}], "CPU", file)
    text = file.read_text()
    assert text.startswith("# Benchmarks") and text.count("## CPU") == 1 and text.count("## GPU") == 1
    assert "| a | 3 s |" in text and "| a | 1 s |" not in text and "| g | 1 s |" in text
    assert text.index("## CPU") < text.index("## GPU")
