"""The GPU check (scripts/gpu_check.sh), without a GPU: its dry run collects every stage's exact
selection as a GPU machine would (the op tests by their markers) and runs the profiler script on
the CPU; the driver stops a stage at its budget and goes on, lets the stage that extends take the
time the others left, names failing tests, skips what depends on a failed stage, bundles its
results; the build is for the GPU's own architecture unless a carried build fits; the report
stage merges the benchmark files and judges the speed targets."""

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
    assert list(stages) == ["env", "build", "tests", "memcheck", "racecheck", "bench-ops", "bench-models", "profile",
                            "bench-compiled", "report"]
    assert report["budget_s"] <= gpu_check.LIMIT_S == 300
    # The tests are chosen by markers alone, and only their GPU cases: no -k, no CPU case.
    for name in ("tests", "memcheck", "racecheck"):
        (command,) = stages[name]["commands"]
        assert " -m " in command and " -k " not in command
        ids = [line for line in (tmp_path / f"dry-run-{name}.log").read_text().splitlines() if "::" in line]
        assert ids and all("cuda-" in i or i.startswith("tests/test_cuda.py::") for i in ids), ids
    assert 35 <= stages["tests"]["collected"] <= 45
    tests_log = (tmp_path / "dry-run-tests.log").read_text()
    for node in ("tests/test_cuda.py::test_cuda_graph_capture_and_replay",
                 "tests/test_compile.py::test_fullgraph_compile_matches_eager[cuda-triton]",
                 "tests/test_registry.py::test_opcheck_loss[cuda-cuda]",
                 "tests/test_validation.py::test_direct_op_calls_still_check[cuda-cuda]",
                 "tests/test_masked_graph_conv.py::test_many_graphs[cuda-triton]"):
        assert node in tests_log
    for suite in ("gradcheck", "gradgradcheck", "bitwise", "second_order"):
        assert suite not in tests_log
    # At most 5 cases under memcheck, of both backends; racecheck on the CUDA C++ kernels alone.
    assert stages["memcheck"]["collected"] == 4 and stages["racecheck"]["collected"] == 2
    assert "cuda-triton" not in (tmp_path / "dry-run-racecheck.log").read_text()
    assert stages["bench-ops"]["collected"] == 17  # 2 ops x 2 modes x 4 providers + the copy
    assert stages["bench-models"]["collected"] == 9  # pre-training N=128, fine-tuning N=16, 128; 3 providers
    assert stages["bench-compiled"]["collected"] == 1
    assert all(not s.get("not_collected") for s in report["stages"])
    # The profiler script ran here on tiny shapes and wrote both kernel tables: of our op where
    # the tree it imports has the kernels built in place, else of the reference path's.
    op_table = (tmp_path / "profile-masked_graph_conv.txt").read_text()
    built = any(name.startswith("_C") for name in tree)
    assert ("skelmae_ext::masked_graph_conv_backward" if built else "aten::einsum") in op_table
    assert "Self CPU" in op_table
    assert "Optimizer.step#Adam.step" in (tmp_path / "profile-pretraining-step.txt").read_text()
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
    assert "interrupted: writing the summary" in (tmp_path / "out" / "stages" / "slow.log").read_text()
    assert records["next"]["status"] == "PASS"
    assert "slow" in summary and "TIMEOUT" in summary
    # The bundle: a few files a caller can copy back, the tarball holding every log.
    bundle = sorted(p.name for p in (tmp_path / "bundle").iterdir())
    assert bundle == ["gpu-check.tar.gz", "summary.json", "summary.txt"]
    with tarfile.open(tmp_path / "bundle" / "gpu-check.tar.gz") as archive:
        names = archive.getnames()
    assert "out/stages/slow.log" in names and "out/stages/next.log" in names


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
    assert not (tmp_path / "out" / "stages" / "tests.log").exists()


def test_every_stage_passing_exits_zero(tmp_path, monkeypatch):
    # A budget shorter than GRACE_S (the report stage's) still leaves its commands time to run.
    status, records, _ = run_stages(tmp_path, monkeypatch, [
        Stage("one", 30, "prints", [python("print(1)")], []),
        Stage("short", gpu_check.GRACE_S - 1, "prints twice", [python("print(2)"), python("print(3)")], []),
    ])
    assert status == 0 and records["one"]["status"] == records["short"]["status"] == "PASS"
    log = (tmp_path / "out" / "stages" / "short.log").read_text()
    assert "\n2\n" in log and log.endswith("\n3\n")


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


def test_a_stage_that_extends_takes_the_time_the_others_left(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "LIMIT_S", 100)
    status, records, _ = run_stages(tmp_path, monkeypatch, [
        Stage("quick", 30, "ends at once", [python("print(1)")], []),
        Stage("compile", 10, "may take long", [python("print(2)")], [], extends=True),
        Stage("last", 20, "keeps its budget", [python("print(3)")], []),
    ])
    assert status == 0
    # 100 s less the one used so far and the 20 s the last stage keeps: about 80 s, not 10.
    assert 70 <= records["compile"]["budget_s"] <= 80
    assert records["quick"]["budget_s"] == 30 and records["last"]["budget_s"] == 20


@pytest.mark.parametrize("budget,elapsed,expected", [(10, 30, 50), (10, 85, 10), (60, 30, 60)])
def test_an_extending_budget_is_at_least_its_own(budget, elapsed, expected, monkeypatch):
    monkeypatch.setattr(gpu_check, "LIMIT_S", 100)
    stage = Stage("compile", 10, "", [], [], extends=True)
    later = [Stage("report", 5, "", [], []), Stage("profile", 15, "", [], [])]
    # 100 - elapsed - (5 + 15), or the stage's budget (--budget's) where that is more
    assert gpu_check.stage_budget(stage, later, {"compile": budget}, elapsed) == expected


BUILD = {"library": "_C.abi3.so", "torch": "2.11.0+cu130", "with_cuda": True, "arch_list": "8.0;9.0+PTX"}


@pytest.mark.parametrize("build,torch_version,capability,problem", [
    (BUILD, "2.11.0+cu130", "9.0", None),
    (BUILD, "2.11.0+cu130", "8.0", None),
    (BUILD, "2.11.0+cu130", "10.0", None),  # sm_90 PTX, compiled by the driver for the newer GPU
    (dict(BUILD, arch_list="9.0"), "2.11.0+cu130", "10.0", "built for 9.0, not for compute capability 10.0"),
    (dict(BUILD, arch_list="9.0"), "2.11.0+cu130", "8.6", "built for 9.0, not for compute capability 8.6"),
    (BUILD, "2.14.1+cu130", "9.0", "built for torch 2.11.0+cu130, this is torch 2.14.1+cu130"),
    (dict(BUILD, with_cuda=False, arch_list=""), "2.11.0+cu130", "9.0", "built without the CUDA kernels"),
    (None, "2.11.0+cu130", "9.0", "no skelmae_ext/_C*.so with its _build_info.py in the tree"),
], ids=["fits", "older GPU", "PTX for a newer GPU", "cubin of another GPU", "cubin of a newer GPU", "other torch",
        "CPU build", "no build"])
def test_a_carried_build_fits_only_its_torch_and_a_gpu_it_has_code_for(build, torch_version, capability, problem):
    assert gpu_check.carried_problem(build, torch_version, capability) == problem


def build_stage_for(tmp_path, prebuilt, capability, build):
    """The build stage as a run builds it after an env stage that found `capability`, `build`."""
    ctx = gpu_check.Context(out=tmp_path, prebuilt=prebuilt)
    (tmp_path / "env.json").write_text(json.dumps({"torch": "2.11.0+cu130", "capability": capability,
                                                   "cuda_available": True, "build": build}))
    gpu_check.load_probe(ctx)
    return next(s for s in gpu_check.stages(ctx) if s.name == "build")


@pytest.mark.parametrize("prebuilt", [False, True], ids=["asked to build", "carried build for another torch"])
def test_the_build_is_for_the_gpus_own_architecture_with_every_core(tmp_path, prebuilt):
    stage = build_stage_for(tmp_path, prebuilt, "8.6", dict(BUILD, torch="2.14.1+cu130"))
    build, check = stage.commands
    assert build.argv[1:] == ["setup.py", "build_ext", "--inplace"]
    assert build.env["TORCH_CUDA_ARCH_LIST"] == "8.6"  # no second architecture for sm_90
    assert build.env["MAX_JOBS"] == str(os.cpu_count())
    # .ci/check_build.py then asks for no sm_90 code either.
    assert check.argv[1:] == [".ci/check_build.py"] and check.env == {"SKELMAE_ARCH_LIST_ONLY": "1"}
    assert ("carried build not used: built for torch 2.14.1+cu130" in stage.purpose) is prebuilt


def test_a_fitting_carried_build_is_checked_not_rebuilt(tmp_path):
    stage = build_stage_for(tmp_path, True, "9.0", BUILD)
    assert [c.argv[1:] for c in stage.commands] == [[".ci/check_build.py"]]
    assert "nvcc" not in stage.tools and stage.budget_s < 70
    # Without --prebuilt the same tree is built again.
    assert build_stage_for(tmp_path, False, "9.0", BUILD).commands[0].argv[1] == "setup.py"


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

    assert gpu_check.main(["--report", str(merged), str(tmp_path)]) == 0
    # report.md: benchmarks/report.py's table, then the targets.
    report = (tmp_path / "report.md").read_text()
    assert f"| {pretraining} | cuda | 10.00 | 3.00x | 1.20x |" in report
    assert f"| {conv}: vs reference-compiled | triton | 3.0 | 2 | missed: 67% of the target |" in report
    assert f"| {loss}: fraction_of_copy | cuda | 0.6 |  | not measured |" in report
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
