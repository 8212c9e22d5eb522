"""mingpt bench: config parsing and the per-kernel profile (tiny runs; the
speed itself is measured by the benchmark, never asserted here)."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli import main
from mingpt_c.benchmarks import cpu as benchmark


def test_parse_configs():
    assert benchmark.parse_configs("baby, small") == ["baby", "small"]
    assert benchmark.parse_configs("") == []
    with pytest.raises(ValueError, match="unknown config 'huge'"):
        benchmark.parse_configs("baby,huge")


def test_profile_accounts_for_the_whole_step():
    lines = []
    res = benchmark.run_profile(["baby"], steps=2, threads=1, echo=lines.append)["baby"]
    groups = res["groups"]
    assert set(groups) == set(benchmark.PROFILE_GROUPS) | {benchmark.PY_GROUP}
    # every kernel group the GPT step calls was timed (GELU included: the
    # block keeps its activation kernels in a table built at import)
    for g in ("matmul", "attention", "layernorm", "GELU", "loss", "AdamW"):
        assert groups[g] > 0, g
    assert sum(groups.values()) == pytest.approx(res["step_ms"], rel=1e-6)
    assert groups["matmul"] > groups["loss"]
    assert lines[0].startswith("profile: baby (batch 12 x block 64), 1 threads, 2 steps")
    assert any(line.split()[0] == "matmul" for line in lines[2:])


def test_bench_cli_rejects_unknown_config():
    r = CliRunner().invoke(main, ["bench", "--config", "tiny", "--profile"])
    assert r.exit_code != 0
    assert "unknown config 'tiny'" in r.output


def test_workers_import_this_package_not_the_current_directory(tmp_path, monkeypatch):
    """A folder holding an unbuilt source tree must not shadow the package
    the benchmark runs from (`python -m` puts the current directory first)."""
    (tmp_path / "mingpt_c").mkdir()
    (tmp_path / "mingpt_c" / "__init__.py").write_text('raise ImportError("an unbuilt source tree")\n')
    monkeypatch.chdir(tmp_path)
    assert benchmark._run_worker(["gemm", "1"], 1)["gflops"] > 0
