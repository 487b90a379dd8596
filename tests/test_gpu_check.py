"""The GPU check (scripts/gpu_check.sh), without a GPU: its dry run collects every stage's exact
selection as a GPU machine would; the driver stops a stage at its budget and goes on, names
failing tests, skips what depends on a failed stage, bundles its results; the report stage
merges the benchmark files and judges the speed targets."""

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)

Stage, Command = gpu_check.Stage, gpu_check.Command


def python(code):
    return Command([sys.executable, "-c", code])


def run_stages(tmp_path, monkeypatch, stages, bundle=None):
    """Runs the driver over `stages`; returns (exit status, {stage: record}, summary text)."""
    monkeypatch.setattr(gpu_check, "stages", lambda ctx: stages)
    ctx = gpu_check.Context(out=tmp_path / "out")
    status = gpu_check.run(ctx, set(), {}, bundle)
    records = {r["stage"]: r for r in json.loads((ctx.out / "summary.json").read_text())["stages"]}
    return status, records, (ctx.out / "summary.txt").read_text()


def package_files():
    return sorted(p.name for p in (ROOT / "skelmae_ext").iterdir() if p.name != "__pycache__")


def test_dry_run_collects_every_stage_as_on_a_gpu(tmp_path):
    tree = package_files()
    result = subprocess.run(["bash", "scripts/gpu_check.sh", str(tmp_path), "--dry-run"], cwd=ROOT,
                            env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "dry-run.json").read_text())
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == ["env", "build", "tests", "memcheck", "racecheck", "bench-ops", "bench-models", "report"]
    assert report["budget_s"] <= gpu_check.LIMIT_S
    # Each pytest stage collected its selection with the GPU parametrizations, none missing.
    assert stages["bench-ops"]["collected"] == 17  # 2 ops x 2 modes x 4 providers + the copy
    assert stages["bench-models"]["collected"] == 14  # 2 steps x 2 batch sizes x 4 providers, less 2 compiles
    # The sanitizer stages stay within what their budgets were sized for.
    assert 100 <= stages["memcheck"]["collected"] <= 150 and stages["racecheck"]["collected"] == 4
    assert stages["tests"]["collected"] > stages["memcheck"]["collected"]
    assert all(not s.get("not_collected") for s in report["stages"])
    tests_log = (tmp_path / "dry-run-tests.log").read_text()
    for node in ("tests/test_cuda.py::test_cuda_graph_capture_and_replay",
                 "tests/test_compile.py::test_fullgraph_compile_matches_eager[cuda-triton]",
                 "tests/test_masked_graph_conv.py::test_hand_computed_path_graph[cuda-cuda]"):
        assert node in tests_log
    # The tools each stage needs are named and looked up.
    assert "compute-sanitizer" in stages["memcheck"]["tools"] and "nvcc" in stages["build"]["tools"]
    assert "nvidia-smi" in stages["env"]["tools"]
    assert package_files() == tree  # it built nothing


def test_a_stage_past_its_budget_is_interrupted_and_the_next_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "GRACE_S", 2)
    sleeper = python("import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n"
                     "    print('interrupted: writing the summary')\n    raise")
    start = time.monotonic()
    status, records, summary = run_stages(tmp_path, monkeypatch, [
        Stage("slow", 4, "sleeps past its budget", [sleeper], []),
        Stage("next", 30, "prints", [python("print('ran')")], []),
    ], bundle=tmp_path / "bundle")
    assert time.monotonic() - start < 20
    assert status == 1
    assert records["slow"]["status"] == "TIMEOUT" and records["slow"]["seconds"] <= 4 + 1
    # SIGINT first: the command could still write its results.
    assert "interrupted: writing the summary" in (tmp_path / "out" / "slow.log").read_text()
    assert records["next"]["status"] == "PASS"
    assert "slow" in summary and "TIMEOUT" in summary
    # The bundle: a few files a caller can copy back, the tarball holding every log.
    bundle = sorted(p.name for p in (tmp_path / "bundle").iterdir())
    assert bundle == ["gpu-check.tar.gz", "summary.json", "summary.txt"]
    with tarfile.open(tmp_path / "bundle" / "gpu-check.tar.gz") as archive:
        names = archive.getnames()
    assert "out/slow.log" in names and "out/next.log" in names


def test_failing_tests_are_named_and_tests_that_did_not_run_reported(tmp_path, monkeypatch):
    tests = tmp_path / "test_sample.py"
    tests.write_text("import pytest\n\ndef test_good():\n    pass\n\n"
                     "@pytest.mark.parametrize('case', ['a b'])\ndef test_bad(case):\n    assert case == 'c'\n")
    ctx = gpu_check.Context(out=tmp_path / "out")
    stage = Stage("tests", 120, "a sample", [
        gpu_check.pytest_command(ctx, [str(tests), "-p", "no:cacheprovider"], ["-rA"])
    ], [], expect=[r"::test_good$", r"::test_absent$"])
    status, records, summary = run_stages(tmp_path, monkeypatch, [stage])
    assert status == 1
    record = records["tests"]
    assert record["status"] == "FAIL"
    assert [name.split("::")[-1] for name in record["failed"]] == ["test_bad[a b]"]
    assert record["not_run"] == [r"::test_absent$"]
    assert "1 failed, 1 passed" in record["result"]
    assert "FAILED" in summary and "test_bad[a b]" in summary


def test_a_stage_after_a_failed_one_is_skipped(tmp_path, monkeypatch):
    status, records, summary = run_stages(tmp_path, monkeypatch, [
        Stage("build", 30, "fails", [python("raise SystemExit('nvcc: error: no such architecture')")], []),
        Stage("tests", 30, "needs the build", [python("print('ran')")], [], after="build"),
    ])
    assert status == 1
    assert records["build"]["status"] == "FAIL" and records["build"]["exit_status"] == 1
    assert records["build"]["last_lines"][-1] == "nvcc: error: no such architecture"
    assert records["tests"] == {"stage": "tests", "status": "SKIPPED", "budget_s": 30,
                                "reason": "build did not pass"}
    assert not (tmp_path / "out" / "tests.log").exists()


def test_every_stage_passing_exits_zero(tmp_path, monkeypatch):
    # A budget shorter than GRACE_S (the report stage's) still leaves its commands time to run.
    status, records, _ = run_stages(tmp_path, monkeypatch, [
        Stage("one", 30, "prints", [python("print(1)")], []),
        Stage("short", gpu_check.GRACE_S - 5, "prints twice", [python("print(2)"), python("print(3)")], []),
    ])
    assert status == 0 and records["one"]["status"] == records["short"]["status"] == "PASS"
    assert "\n2\n" in (tmp_path / "out" / "short.log").read_text()
    assert (tmp_path / "out" / "short.log").read_text().endswith("\n3\n")


RESULT = "============ 1 passed in 3.20s ============"


RACECHECK = "========= RACECHECK SUMMARY: {0} hazards displayed ({0} errors, 0 warnings)"  # as on an H200


@pytest.mark.parametrize("outcome,summary,passes,reported", [
    ("PASSED tests/a.py::test_x[cuda-cuda]", "========= ERROR SUMMARY: 0 errors", True, "ERROR SUMMARY: 0 errors"),
    ("PASSED tests/a.py::test_x[cuda-cuda]", "========= ERROR SUMMARY: 2 errors", False, "ERROR SUMMARY: 2 errors"),
    ("PASSED tests/a.py::test_x[cuda-cuda]", RACECHECK.format(0), True, "ERROR SUMMARY: 0 errors"),
    ("PASSED tests/a.py::test_x[cuda-cuda]", RACECHECK.format(24), False, "ERROR SUMMARY: 24 errors"),
    ("PASSED tests/a.py::test_x[cuda-cuda]", None, False, "no ERROR SUMMARY"),  # the sanitizer did not finish
    ("FAILED tests/a.py::test_x[cuda-cuda] - AssertionError", "========= ERROR SUMMARY: 0 errors", False,
     "ERROR SUMMARY: 0 errors"),
    ("PASSED tests/a.py::test_x[cpu-cpu]", "========= ERROR SUMMARY: 0 errors", False,
     "ERROR SUMMARY: 0 errors"),  # no GPU test ran
], ids=["clean", "errors", "racecheck clean", "racecheck hazards", "unfinished", "a test failed", "no GPU test"])
def test_a_sanitizer_stage_passes_only_on_zero_errors(outcome, summary, passes, reported):
    stage = Stage("memcheck", 30, "", [], [], expect=[r"\[cuda-cuda\]$"], sanitizer=True)
    log = "\n".join([outcome, RESULT] + ([summary] if summary else []))
    ok, details = gpu_check.examine(stage, log)
    assert ok is passes
    assert details["result"] == "1 passed in 3.20s"  # pytest's line, not the sanitizer's
    assert details["sanitizer"] == reported


@pytest.mark.parametrize("capability,expected", [("9.0", "9.0"), ("8.0", "8.0;9.0"), ("10.0", "9.0;10.0")])
def test_arch_list_is_the_gpus_and_sm_90(capability, expected):
    assert gpu_check.arch_list(capability) == expected


def benchmark(group, provider, median_ms, **extra):
    return {"group": group, "name": f"{group}-{provider}", "stats": {"median": median_ms / 1e3},
            "extra_info": {"provider": provider, "device": "NVIDIA H100 80GB HBM3", **extra}}


def test_report_merges_both_benchmark_files_and_judges_the_targets(tmp_path):
    conv, loss = gpu_check.OP_GROUPS
    pretraining = gpu_check.STEP_GROUP.format("SkeletonMAE pre-training", 128)
    machine = {"cpu": {"brand_raw": "a CPU", "count": 16}}
    ops = [benchmark(conv, "reference", 12.0), benchmark(conv, "reference-compiled", 3.0),
           benchmark(conv, "cuda", 0.5, fraction_of_copy=0.7), benchmark(conv, "triton", 1.5, fraction_of_copy=0.5)]
    models = [benchmark(pretraining, "reference", 30.0), benchmark(pretraining, "reference-compiled", 12.0),
              benchmark(pretraining, "cuda", 10.0)]
    (tmp_path / "ops.json").write_text(json.dumps({"machine_info": machine, "benchmarks": ops}))
    (tmp_path / "models.json").write_text(json.dumps({"machine_info": machine, "benchmarks": models}))
    merged, targets = tmp_path / "bench.json", tmp_path / "targets.json"

    assert gpu_check.main(["--merge", str(merged), str(tmp_path / "ops.json"), str(tmp_path / "absent.json"),
                           str(tmp_path / "models.json")]) == 0
    assert len(json.loads(merged.read_text())["benchmarks"]) == 7
    table = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), str(merged)],
                           capture_output=True, text=True, check=True).stdout
    assert "GPU: NVIDIA H100 80GB HBM3" in table and f"| {pretraining} | cuda | 10.00 | 3.00x | 1.20x |" in table

    assert gpu_check.main(["--targets", str(merged), str(targets)]) == 0
    rows = {(r["benchmark"], r["figure"], r["provider"]): r for r in json.loads(targets.read_text())}
    assert len(rows) == 2 * len(gpu_check.TARGETS)
    assert rows[(conv, "vs reference-compiled", "cuda")]["measured"] == pytest.approx(6.0)  # 3.0 / 0.5 ms
    assert rows[(conv, "vs reference-compiled", "cuda")]["held"] is True
    assert rows[(conv, "vs reference-compiled", "triton")]["held"] is False  # 2x, 3x needed
    assert rows[(conv, "fraction_of_copy", "cuda")]["held"] is True
    assert rows[(conv, "fraction_of_copy", "triton")]["held"] is False
    assert rows[(pretraining, "vs reference", "cuda")]["measured"] == pytest.approx(3.0)
    assert rows[(pretraining, "vs reference-compiled", "cuda")]["held"] is True  # exactly 1.2x
    assert rows[(pretraining, "vs reference", "triton")]["held"] is None  # not measured
    assert rows[(loss, "fraction_of_copy", "cuda")]["measured"] is None


def test_merge_without_any_benchmark_file_fails(tmp_path):
    assert gpu_check.main(["--merge", str(tmp_path / "bench.json"), str(tmp_path / "absent.json")]) == 1


@pytest.mark.parametrize("argv", [["--stages", "tests,nope"], ["--budget", "tests"], ["--budget", "nope=10"]])
def test_bad_options_name_the_problem(argv, capsys):
    with pytest.raises(SystemExit) as stopped:
        gpu_check.main(argv)
    assert stopped.value.code == 2
    assert "stages" in capsys.readouterr().err
