"""The GPU check: on a machine with an NVIDIA GPU and no network, in at most five minutes,
builds the kernels for that GPU alone (or checks a carried build), runs a representative set of
CUDA and Triton op tests, compute-sanitizer memcheck and racecheck on a few small cases, the
op and training-step benchmarks with the speed targets, and torch.profiler kernel tables, each
stage under its own time budget; ends with a one-screen summary (exit status 1 if a stage
failed). Run through scripts/gpu_check.sh; docs/gpu.md.

    bash scripts/gpu_check.sh [OUT_DIR] [--prebuilt] [--bundle DIR] [--stages a,b] [--budget stage=s] [--dry-run]

OUT_DIR holds what docs/gpu/<gpu>-<date>/ keeps: summary.txt and summary.json, env.json,
bench.json (every benchmark), targets.json and report.md (the table and the speed targets),
profile-*.txt (the kernel tables); OUT_DIR/stages/ holds each stage's log and raw results.

The tests are chosen by pytest markers (pyproject.toml): `gpu` on every case that runs on a
CUDA device, `gpu_smoke` on the op tests run here, `sanitize` on the sanitizer's cases.

--dry-run checks here, without a GPU, every stage's command line: pytest collects each exact
selection (with scripts/as_if_gpu.py making torch report a GPU) and must list the expected
tests, the probe and the profiler script run for real on the CPU, scripts exist and compile,
the tools each stage needs are looked up.
"""

import argparse
import dataclasses
import importlib.util
import json
import os
import py_compile
import re
import runpy
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT_S = 5 * 60  # the whole check, on an H100
# A stage gets SIGINT this long before its budget ends (a third of a short one), SIGKILL at the
# end: time for pytest to write its summary and the benchmarks that finished.
GRACE_S = 5
XDIST_WORKERS = 8  # test processes beside each other: Triton compiles each kernel variant on one core
OUTCOME = re.compile(r"^(PASSED|FAILED|ERROR|XPASS|XFAIL) (\S.*?)(?: - .*)?$")
RESULT_LINE = re.compile(r"\d+ (passed|failed|errors?|skipped|deselected)|no tests ran|Interrupted|tests? collected")
# memcheck ends with the first, racecheck with the second (its "errors" are hazards of error level)
SANITIZER_SUMMARY = re.compile(r"ERROR SUMMARY: (\d+) errors?|RACECHECK SUMMARY: \d+ hazards? displayed \((\d+) errors?")

# Selections (pytest -m): the op tests marked gpu_smoke, on cuda for each GPU backend (forward and
# backward against the reference and hand values per op, low precision, opcheck, one compile test,
# the direct-call error test, CUDA graph capture, offsets past 2^31); no gradcheck or bitwise suites.
TESTS_M = "gpu_smoke and gpu"
MAX_TESTS = 45
# memcheck: the sanitize cases (small, non-contiguous: every kernel's tails and strides) on both
# backends. racecheck: those of the CUDA C++ kernels alone; Triton's own reductions trip it
# (write-write hazards in its shared-memory butterflies, triton-lang/triton#7264, #4736): on an
# H200 all 24 hazards it showed were in tl.sum of the loss's Triton kernel.
MEMCHECK_M = "sanitize and gpu"
RACECHECK_M = "sanitize and gpu and not triton"
MAX_SANITIZED = 5
# GPU benchmarks (pytest -k over their parametrization ids: the benchmark files mark no devices)
# of each op at its acceptance shape and the GPU's copy bandwidth, every provider on cuda.
OP_SHAPES = {"masked_graph_conv": "G16384-V17-C64", "cosine_reconstruction_loss": "R278528-C64"}
BENCH_OPS_K = f"cuda and ({' or '.join(OP_SHAPES.values())} or copy)"
GPU_PROVIDERS = ["reference", "reference-compiled", "cuda", "triton"]
# The model steps the targets name, eager: pre-training at N = 128, fine-tuning at N = 16 and 128.
# The reference pre-training step compiled runs in a stage of its own, which may also take the
# time the others left: its two whole-model compiles (eval, then train) must not eat theirs.
STEPS = {"pretraining": (128,), "finetuning": (16, 128)}
BENCH_MODELS_K = "cuda and not compiled and (N128 or finetuning)"
BENCH_COMPILED_K = "pretraining and N128-cuda-reference-compiled"
# The speed targets on the GPU: (benchmark group, figure, at least), for each of our backends.
OP_GROUPS = ["masked_graph_conv forward+backward G=16384 V=17 C=64 on cuda",
             "cosine_reconstruction_loss forward+backward rows=278528 C=64 on cuda"]
STEP_GROUP = "{} step N={} M=2 T=64 V=17 D=64 on cuda"
TARGETS = [
    *[(group, figure, least) for group in OP_GROUPS
      for figure, least in (("fraction_of_copy", 0.6), ("vs reference-compiled", 3.0))],
    (STEP_GROUP.format("SkeletonMAE pre-training", 128), "vs reference", 2.0),
    (STEP_GROUP.format("SkeletonMAE pre-training", 128), "vs reference-compiled", 1.2),
    *[(STEP_GROUP.format("SSL classifier fine-tuning", n), "vs reference", 1.5) for n in (16, 128)],
]


@dataclasses.dataclass
class Command:
    argv: list
    env: dict = dataclasses.field(default_factory=dict)
    # pytest commands: the arguments the dry run collects with (argv less a wrapper and -n).
    collect: list = None
    # what the dry run runs for real here, on the CPU, in place of argv
    here: list = None


@dataclasses.dataclass
class Stage:
    name: str
    budget_s: int
    purpose: str
    commands: list
    tools: list  # executables and Python modules it needs ("module:name")
    after: str = None  # the stage that must have passed first ("gpu": env found one)
    expect: list = ()  # regexes: each must match a test id that ran (that is collected, in the dry run)
    count: int = None  # at most this many tests collected (the budget was sized for them)
    sanitizer: bool = False  # passes only with a summary of 0 errors (SANITIZER_SUMMARY)
    keep_going: bool = False  # run every command even after one failed
    extends: bool = False  # may also take what earlier stages left unused of LIMIT_S


@dataclasses.dataclass
class Context:
    out: Path
    python: str = sys.executable
    arch_list: str = "9.0"  # TORCH_CUDA_ARCH_LIST: the GPU's own compute capability (env stage)
    jobs: int = os.cpu_count() or 1
    xdist: bool = False
    prebuilt: bool = False  # --prebuilt: use the carried in-place build where it fits
    carried: str = "not examined"  # why the carried build does not fit; None where it does

    @property
    def logs(self):
        return self.out / "stages"


def arch_number(item):
    """90 for "9.0", "9.0+PTX" or "9.0a"."""
    return int("".join(ch for ch in item.split("+")[0] if ch.isdigit()))


def carried_problem(build, torch_version, capability):
    """Why the in-place build in the tree (the probe's "build") cannot serve a GPU of
    `capability` under this torch, or None: a build for another torch does not load (the
    package falls back to the reference path), and the GPU needs its own cubin or older PTX."""
    if not build:
        return "no skelmae_ext/_C*.so with its _build_info.py in the tree"
    if not build["with_cuda"]:
        return "built without the CUDA kernels"
    if build["torch"] != torch_version:
        return f"built for torch {build['torch']}, this is torch {torch_version}"
    items = [i for i in build["arch_list"].replace(" ", ";").split(";") if i]
    gpu = arch_number(capability)
    if gpu not in {arch_number(i) for i in items} and not any(
            i.endswith("+PTX") and arch_number(i) <= gpu for i in items):
        return f"built for {build['arch_list']}, not for compute capability {capability}"
    return None


def pytest_command(ctx, selection, options=(), wrapper=(), parallel=False, env=None):
    workers = ["-n", str(XDIST_WORKERS)] if parallel and ctx.xdist else []
    collect = [*selection, "-q", *options]
    return Command([*wrapper, ctx.python, "-m", "pytest", *collect, *workers], env or {}, collect)


def sanitizer(tool):
    return ["compute-sanitizer", "--tool", tool, "--error-exitcode", "99", "--print-limit", "50"]


def expected_benchmarks():
    """Ids of the benchmarks each benchmark stage must run: ops, eager steps, compiled step."""
    ops = [rf"benchmarks/test_ops\.py::test_{op}\[{shape}-cuda-{re.escape(p)}-{re.escape(m)}\]$"
           for op, shape in OP_SHAPES.items() for p in GPU_PROVIDERS for m in ("forward", "forward+backward")]
    ops.append(r"benchmarks/test_ops\.py::test_copy_bandwidth\[cuda\]$")
    steps = [rf"benchmarks/test_models\.py::test_{kind}_step\[N{n}-cuda-{p}\]$"
             for kind, batches in STEPS.items() for n in batches for p in ("reference", "cuda", "triton")]
    compiled = [r"benchmarks/test_models\.py::test_pretraining_step\[N128-cuda-reference-compiled\]$"]
    return ops, steps, compiled


def expected_tests(files, backends=("cuda", "triton")):
    """Each op test file runs on each GPU backend named."""
    return [rf"^tests/{re.escape(f)}::.*\[(.*-)?cuda-{b}\]$" for f in files for b in backends]


def build_stage(ctx):
    """The in-place build for the GPU's architecture alone, or the carried build checked."""
    check = Command([ctx.python, ".ci/check_build.py"], {"SKELMAE_ARCH_LIST_ONLY": "1"})
    if ctx.prebuilt and ctx.carried is None:
        return Stage("build", 15, "the carried build (--prebuilt): .ci/check_build.py", [check],
                     ["module:torch"], after="gpu")
    note = f" (carried build not used: {ctx.carried})" if ctx.prebuilt else ""
    # 54 s and 64 s on an H200 machine with 16 cores, its one architecture.
    return Stage("build", 75, f"the kernels in place, TORCH_CUDA_ARCH_LIST={ctx.arch_list}, {ctx.jobs} jobs; "
                              f".ci/check_build.py{note}", [
        Command([ctx.python, "setup.py", "build_ext", "--inplace"],
                {"TORCH_CUDA_ARCH_LIST": ctx.arch_list, "MAX_JOBS": str(ctx.jobs), "SKELMAE_FORCE_CUDA": "1"}),
        check,
    ], ["nvcc", "ninja", "module:torch", "module:setuptools"], after="gpu")


def stages(ctx):
    """Every stage, in order; budgets in seconds (their sum stays within LIMIT_S), sized by two
    runs on an H200 of a larger check (tests/README.md)."""
    out, logs = ctx.out, ctx.logs
    me = [ctx.python, "scripts/gpu_check.py"]
    ops_ids, step_ids, compiled_ids = expected_benchmarks()
    op_files = ["test_masked_graph_conv.py", "test_cosine_reconstruction_loss.py"]
    no_caching = {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}  # every tensor its own allocation: overruns are caught
    probe_argv = [*me, "--probe", str(out / "env.json")]
    profile = [ctx.python, "scripts/gpu_profile.py", str(out)]
    bench_json = {name: logs / f"{name}.json" for name in ("bench-ops", "bench-models", "bench-compiled")}
    return [
        Stage("env", 15, "nvidia-smi, the GPU's name and compute capability, torch / triton / nvcc versions, "
                         "the carried build", [
            Command(probe_argv, here=probe_argv),
            Command(["nvidia-smi"]),
            Command(["nvcc", "--version"]),
            Command(["compute-sanitizer", "--version"]),
        ], ["nvidia-smi", "nvcc", "compute-sanitizer", "module:torch"], keep_going=True),
        build_stage(ctx),
        Stage("tests", 55, f'pytest tests/ -m "{TESTS_M}": the op tests on cuda for each GPU backend', [
            pytest_command(ctx, ["tests/", "-m", TESTS_M], ["-rA", "--durations=10"], parallel=True,
                           env={"TORCHINDUCTOR_COMPILE_THREADS": "2"}),  # beside the xdist workers
        ], ["module:pytest", "module:triton"], after="build", count=MAX_TESTS,
            expect=expected_tests(op_files) + [
                *[rf"^tests/test_cuda\.py::test_{name}$" for name in (
                    "reduce_overhead_compile_with_linear_matches_eager", "cuda_graph_capture_and_replay",
                    "graph_conv_offsets_past_2_31", "loss_offsets_past_2_31")],
                *[rf"^tests/test_{name}\[cuda-{b}\]$" for b in ("cuda", "triton")
                  for name in ("compile\\.py::test_fullgraph_compile_matches_eager",
                               "registry\\.py::test_opcheck_graph_conv", "registry\\.py::test_opcheck_loss",
                               "validation\\.py::test_direct_op_calls_still_check")]]),
        # On an H200 a sanitized pytest took 10 s to start (memcheck) and 11 s (racecheck).
        Stage("memcheck", 25, f'compute-sanitizer memcheck on pytest -m "{MEMCHECK_M}"', [
            pytest_command(ctx, ["tests/", "-m", MEMCHECK_M], ["-rA"], wrapper=sanitizer("memcheck"), env=no_caching),
        ], ["compute-sanitizer", "module:pytest"], after="build", expect=expected_tests(op_files),
            count=MAX_SANITIZED, sanitizer=True),
        Stage("racecheck", 25, f'compute-sanitizer racecheck on pytest -m "{RACECHECK_M}"', [
            pytest_command(ctx, ["tests/", "-m", RACECHECK_M], ["-rA"], wrapper=sanitizer("racecheck"),
                           env=no_caching),
        ], ["compute-sanitizer", "module:pytest"], after="build", expect=expected_tests(op_files, ["cuda"]),
            count=2, sanitizer=True),
        # Four small compiles (the reference path's ops, forward and forward+backward), then timing.
        Stage("bench-ops", 35, "both ops forward and forward+backward at the acceptance shapes, copy bandwidth", [
            pytest_command(ctx, ["benchmarks/test_ops.py", "--benchmark-only", "-k", BENCH_OPS_K],
                           ["-rA", f"--benchmark-json={bench_json['bench-ops']}"]),
        ], ["module:pytest", "module:pytest_benchmark"], after="build", expect=ops_ids, count=len(ops_ids)),
        Stage("bench-models", 40, "the pre-training step at N = 128 and the fine-tuning step at N = 16 and 128, "
                                  "the reference and the twins, eager", [
            pytest_command(ctx, ["benchmarks/test_models.py", "--benchmark-only", "-k", BENCH_MODELS_K],
                           ["-rA", f"--benchmark-json={bench_json['bench-models']}"]),
        ], ["module:pytest", "module:pytest_benchmark"], after="build", expect=step_ids, count=len(step_ids)),
        Stage("profile", 20, "torch.profiler kernel tables: masked_graph_conv forward+backward "
                             "(G16384-V17-C64, cuda) and the twin's pre-training step at N = 128", [
            Command([*profile, "--device", "cuda"], here=[*profile, "--device", "cpu"]),
        ], ["module:torch"], after="build"),
        # Its own budget is what the others' budgets leave of LIMIT_S; it also takes what they leave unused.
        Stage("bench-compiled", 5, "the reference pre-training step at N = 128 compiled", [
            pytest_command(ctx, ["benchmarks/test_models.py", "--benchmark-only", "-k", BENCH_COMPILED_K],
                           ["-rA", f"--benchmark-json={bench_json['bench-compiled']}"]),
        ], ["module:pytest", "module:pytest_benchmark"], after="build", expect=compiled_ids, count=1, extends=True),
        Stage("report", 5, "the benchmarks merged, benchmarks/report.py's table and the speed targets", [
            Command([*me, "--merge", str(out / "bench.json"), *map(str, bench_json.values())]),
            Command([*me, "--report", str(out / "bench.json"), str(out)]),
        ], ["module:pytest_benchmark"], after="build"),
    ]


# ---- the run ------------------------------------------------------------------------------------

def base_env():
    """The in-place build first on the path: the stages import the tree they run from."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "python"), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_command(command, log, deadline, grace, extra_env=None):
    """Runs one command in its own process group, its output appended to `log`, stopping it
    `grace` seconds before `deadline`. Returns (exit status, timed out)."""
    env = base_env()
    env.update(command.env)
    env.update(extra_env or {})
    with open(log, "a") as handle:
        handle.write(f"\n$ {' '.join(command.argv)}\n")
        handle.flush()
        try:
            process = subprocess.Popen(command.argv, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as error:
            handle.write(f"cannot run {command.argv[0]}: {error}\n")
            return 127, False
        try:
            return process.wait(timeout=max(0.1, deadline - grace - time.monotonic())), False
        except subprocess.TimeoutExpired:
            return stop(process, grace), True
        except KeyboardInterrupt:
            stop(process, grace)
            raise


def stop(process, grace):
    """SIGINT to the command's process group (pytest then writes its summary and JSON), SIGKILL
    if it has not ended within `grace` seconds. Returns its exit status."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
            return process.wait(timeout=wait)
        except ProcessLookupError:
            return process.wait()
        except subprocess.TimeoutExpired:
            continue
    return -signal.SIGKILL


def outcomes(text):
    """{test id: outcome} from pytest's -rA lines."""
    found = {}
    for line in text.splitlines():
        match = OUTCOME.match(line.strip())
        if match:
            found[match.group(2)] = match.group(1)
    return found


def missing(patterns, ids):
    return [p for p in patterns if not any(re.search(p, i) for i in ids)]


def examine(stage, log_text):
    """(passed, details) from a finished stage's log."""
    details = {}
    ok = True
    if stage.expect or stage.sanitizer:
        results = outcomes(log_text)
        failed = sorted(i for i, o in results.items() if o in ("FAILED", "ERROR", "XPASS"))
        ran = [i for i, o in results.items() if o in ("PASSED", "FAILED", "ERROR")]
        lines = [line.strip(" =") for line in log_text.splitlines()
                 if RESULT_LINE.search(line) and not SANITIZER_SUMMARY.search(line)]
        details.update(result=lines[-1] if lines else "no pytest result line", failed=failed)
        details["not_run"] = missing(stage.expect, ran)
        ok = not failed and not details["not_run"]
    if stage.sanitizer:
        counts = [int(a or b) for a, b in SANITIZER_SUMMARY.findall(log_text)]
        details["sanitizer"] = f"ERROR SUMMARY: {sum(counts)} errors" if counts else "no ERROR SUMMARY"
        ok = ok and bool(counts) and sum(counts) == 0
    return ok, details


def tail(text, lines=3):
    return [line for line in text.splitlines() if line.strip()][-lines:]


def run_stage(stage, ctx, log):
    """Runs a stage's commands one after another within its budget. Returns its record."""
    start = time.monotonic()
    deadline = start + stage.budget_s
    grace = min(GRACE_S, stage.budget_s / 3)
    log.write_text(f"# {stage.name}: {stage.purpose} (budget {stage.budget_s} s)\n")
    for command in stage.commands:  # no results of an earlier run pass for this one's
        for argument in command.argv:
            if argument.startswith("--benchmark-json="):
                Path(argument.split("=", 1)[1]).unlink(missing_ok=True)
    status, timed_out = 0, False
    for command in stage.commands:
        if time.monotonic() >= deadline - grace:
            timed_out = True
            break
        result, timed_out = run_command(command, log, deadline, grace)
        status = status or result
        if timed_out or (result and not stage.keep_going):
            break
    text = log.read_text(errors="replace")
    ok, details = examine(stage, text)
    record = {"stage": stage.name, "budget_s": stage.budget_s, "seconds": round(time.monotonic() - start, 1),
              "log": str(log.relative_to(ctx.out)), **details}
    if timed_out:
        record["status"] = "TIMEOUT"
    elif status or not ok:
        record["status"] = "FAIL"
        if status:
            record["exit_status"] = status
    else:
        record["status"] = "PASS"
    if record["status"] != "PASS" and not record.get("failed"):
        record["last_lines"] = tail(text)
    return record


def load_probe(ctx):
    """The env stage's findings: the architecture to build for (an H100's where no GPU is
    visible, as in the dry run), the test workers, whether the carried build fits."""
    path = ctx.out / "env.json"
    probe = json.loads(path.read_text()) if path.exists() else {}
    ctx.arch_list = probe.get("capability") or ctx.arch_list
    ctx.xdist = bool(probe.get("pytest-xdist"))
    ctx.carried = carried_problem(probe.get("build"), probe.get("torch"), ctx.arch_list)
    return probe


def describe_gpu(probe):
    if not probe.get("cuda_available"):
        return "no CUDA GPU visible to torch"
    return (f"{probe['gpu']} (compute capability {probe['capability']}), torch {probe['torch']} "
            f"(CUDA {probe['torch_cuda']}), triton {probe.get('triton')}")


def summary_lines(records, probe, total_s, out):
    failed = [r for r in records if r["status"] != "PASS"]
    lines = [f"GPU check: {describe_gpu(probe)}",
             f"{len(records) - len(failed)} of {len(records)} stages passed in {total_s:.0f} s "
             f"(limit {LIMIT_S} s); results in {out}/, logs in {out}/stages/", ""]
    lines.append(f"{'stage':<15}{'result':<9}{'time / budget':>15}  detail")
    for r in records:
        detail = r.get("result", "")
        if "sanitizer" in r:
            detail += f"; {r['sanitizer']}"
        if r.get("targets"):
            detail = r["targets"]
        if r["status"] == "SKIPPED":
            detail = r["reason"]
        lines.append(f"{r['stage']:<15}{r['status']:<9}{r.get('seconds', 0):>7.0f} / {r['budget_s']:>3} s  {detail}")
        shown = r.get("failed", [])
        lines += [f"    FAILED {name}" for name in shown[:8]]
        if len(shown) > 8:
            lines.append(f"    ... and {len(shown) - 8} more (see {r['log']})")
        lines += [f"    did not run: {p}" for p in r.get("not_run", [])[:4]]
        lines += [f"    | {line[:150]}" for line in r.get("last_lines", [])]
    return lines


def write_results(ctx, records, probe, started, bundle):
    total = time.monotonic() - started
    lines = summary_lines(records, probe, total, ctx.out)
    (ctx.out / "summary.txt").write_text("\n".join(lines) + "\n")
    summary = {"env": probe, "seconds": round(total, 1), "stages": records}
    (ctx.out / "summary.json").write_text(json.dumps(summary, indent=1))
    if bundle:
        bundle.mkdir(parents=True, exist_ok=True)
        with tarfile.open(bundle / "gpu-check.tar.gz", "w:gz") as archive:
            archive.add(ctx.out, arcname=ctx.out.name)
        for name in ("summary.txt", "summary.json"):
            shutil.copy(ctx.out / name, bundle / name)
    return lines


def targets_line(out):
    path = out / "targets.json"
    if not path.exists():
        return None
    rows = json.loads(path.read_text())
    held = sum(r["held"] is True for r in rows)
    return f"speed targets: {held} of {len(rows)} held (report.md, targets.json)"


def blocked(stage, records, probe, only):
    """Why the stage cannot run, or None. A stage left out by --stages counts as done before."""
    if stage.after == "gpu" and not probe.get("cuda_available"):
        return "no GPU found (env)"
    if stage.after and stage.after != "gpu" and (not only or stage.after in only):
        if not any(r["stage"] == stage.after and r["status"] == "PASS" for r in records):
            return f"{stage.after} did not pass"
    return None


def interrupt(signum, frame):
    raise KeyboardInterrupt


def stage_budget(stage, later, budgets, elapsed):
    """The stage's budget (--budget's, else its own); a stage that extends also takes what the
    stages before it left unused of LIMIT_S, less the budgets of the `later` ones."""
    budget = budgets.get(stage.name, stage.budget_s)
    if stage.extends:
        budget = max(budget, int(LIMIT_S - elapsed - sum(budgets.get(s.name, s.budget_s) for s in later)))
    return budget


def run(ctx, only, budgets, bundle):
    ctx.logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    records, probe = [], {}
    (ctx.out / "env.json").unlink(missing_ok=True)  # the GPU found is this run's
    names = [s.name for s in stages(ctx) if not only or s.name in only or s.name == "env"]
    previous = signal.signal(signal.SIGTERM, interrupt)  # a caller's timeout: stop the stage, write the summary
    try:
        for index, name in enumerate(names):
            # Built again for each stage: the env stage sets the arch list, the test workers and
            # whether the carried build is used.
            current = stages(ctx)
            stage = next(s for s in current if s.name == name)
            reason = blocked(stage, records, probe, only)
            if reason:
                records.append({"stage": name, "status": "SKIPPED", "budget_s": budgets.get(name, stage.budget_s),
                                "reason": reason})
                continue
            later = [s for s in current if s.name in names[index + 1:]]
            stage.budget_s = stage_budget(stage, later, budgets, time.monotonic() - started)
            print(f"== {stage.name} (budget {stage.budget_s} s): {stage.purpose}", flush=True)
            record = run_stage(stage, ctx, ctx.logs / f"{stage.name}.log")
            if stage.name == "env":
                probe = load_probe(ctx)
                record["status"] = record["status"] if probe.get("cuda_available") else "FAIL"
                record["result"] = describe_gpu(probe)
            if stage.name == "report":
                record["targets"] = targets_line(ctx.out)
            records.append(record)
            print(f"   {record['status']} in {record['seconds']:.0f} s", flush=True)
            write_results(ctx, records, probe, started, bundle)
    except KeyboardInterrupt:
        records.append({"stage": "interrupted", "status": "FAIL", "budget_s": 0, "result": "the check was stopped"})
    finally:
        signal.signal(signal.SIGTERM, previous)
    lines = write_results(ctx, records, probe, started, bundle)
    print("\n" + "\n".join(lines), flush=True)
    return 0 if records and all(r["status"] == "PASS" for r in records) else 1


# ---- the dry run ---------------------------------------------------------------------------------

def look_up(tool):
    if tool.startswith("module:"):
        return importlib.util.find_spec(tool.split(":", 1)[1]) is not None
    return shutil.which(tool) is not None


def dry_run_command(command, ctx, log):
    """(ok, note) for one command checked without running it on a GPU."""
    if command.collect is not None:
        collect = Command([ctx.python, "-m", "pytest", "-p", "as_if_gpu", *command.collect, "--collect-only"],
                          command.env)
        # The build importable here (installed, or in place on PYTHONPATH), not the source tree
        # as the current directory (PYTHONSAFEPATH), which lacks the kernels in a fresh clone.
        here = {"PYTHONSAFEPATH": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "scripts"), os.environ.get("PYTHONPATH")]))}
        status, _ = run_command(collect, log, time.monotonic() + 300, GRACE_S, here)
        return status == 0, f"pytest --collect-only exit {status}"
    scripts = [a for a in command.argv if a.endswith(".py")]
    for script in scripts:
        if not (ROOT / script).exists():
            return False, f"{script} does not exist"
        py_compile.compile(str(ROOT / script), doraise=True)
    if command.here:
        status, _ = run_command(Command(command.here, command.env), log, time.monotonic() + 300, GRACE_S)
        return status == 0, f"{Path(command.here[1]).name} ran here: exit {status}"
    return True, "scripts compile" if scripts else f"{command.argv[0]} named"


def dry_run(ctx):
    ctx.out.mkdir(parents=True, exist_ok=True)
    entries, ok = [], True
    for name in [s.name for s in stages(ctx)]:
        # Built again after the probe, as in a run: the build stage follows what it found.
        stage = next(s for s in stages(ctx) if s.name == name)
        log = ctx.out / f"dry-run-{stage.name}.log"
        log.write_text(f"# dry run of {stage.name}\n")
        entry = {"stage": stage.name, "budget_s": stage.budget_s, "purpose": stage.purpose,
                 "commands": [" ".join(c.argv) for c in stage.commands],
                 "tools": {t: look_up(t) for t in stage.tools}, "checks": []}
        for command in stage.commands:
            good, note = dry_run_command(command, ctx, log)
            entry["checks"].append(note)
            ok &= good
        if stage.name == "env":
            load_probe(ctx)
        if stage.expect:
            ids = [line.strip() for line in log.read_text().splitlines() if "::" in line and not line.startswith("$")]
            entry["collected"] = len(ids)
            entry["not_collected"] = missing(stage.expect, ids)
            # count bounds what a stage's budget was sized for (the benchmark stages expect each one).
            fits = stage.count is None or len(ids) <= stage.count
            ok &= not entry["not_collected"] and fits
            if not fits:
                entry["checks"].append(f"collected {len(ids)}, at most {stage.count}")
        entries.append(entry)
    total = sum(entry["budget_s"] for entry in entries)
    if total > LIMIT_S:
        ok = False
        print(f"the stage budgets add up to {total} s, past the {LIMIT_S} s the check must finish in")
    wrapper = subprocess.run(["bash", "-n", "scripts/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True)
    if wrapper.returncode:
        ok = False
        print(f"bash -n scripts/gpu_check.sh: {wrapper.stderr.strip()}")
    carried = ("fits an sm_90 GPU under this torch" if ctx.carried is None else f"does not fit ({ctx.carried})")
    (ctx.out / "dry-run.json").write_text(json.dumps({"ok": ok, "budget_s": total, "carried_build": ctx.carried,
                                                      "stages": entries}, indent=1))
    print(f"GPU check dry run: stage budgets {total} s of {LIMIT_S} s; python {ctx.python}; "
          f"arch list (as for an H100) {ctx.arch_list}; the in-place build here {carried}\n")
    for entry in entries:
        tools = ", ".join(f"{t.removeprefix('module:')}{'' if found else ' (not found here)'}"
                          for t, found in entry["tools"].items())
        collected = f"; collects {entry['collected']}" if "collected" in entry else ""
        print(f"{entry['stage']:<15}{entry['budget_s']:>4} s  {'; '.join(entry['checks'])}{collected}")
        print(f"{'':<21}tools: {tools}")
        for pattern in entry.get("not_collected", []):
            print(f"{'':<21}NOT COLLECTED: {pattern}")
    print(f"\ndry run {'passed' if ok else 'FAILED'} (details: {ctx.out}/dry-run.json and dry-run-*.log)")
    return 0 if ok else 1


# ---- helpers the stages call (subcommands) --------------------------------------------------------

def in_place_build():
    """The build in the tree as setup.py described it (skelmae_ext/_build_info.py), or None."""
    libraries = sorted((ROOT / "skelmae_ext").glob("_C*.so"))
    info = ROOT / "skelmae_ext" / "_build_info.py"
    if not libraries or not info.exists():
        return None
    values = runpy.run_path(str(info))
    return {"library": libraries[0].name, "torch": values["TORCH_VERSION"], "with_cuda": values["WITH_CUDA"],
            "arch_list": values["CUDA_ARCH_LIST"] or ""}


def probe(path):
    """The environment report: versions, the GPU and its compute capability, the build in the tree."""
    import importlib.metadata as metadata

    import torch

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count(), "build": in_place_build()}
    for name in ("triton", "pytest", "pytest-benchmark", "pytest-xdist", "expecttest", "numpy", "setuptools",
                 "ninja"):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = None
    if info["cuda_available"]:
        info["gpu"] = torch.cuda.get_device_name()
        info["capability"] = "%d.%d" % torch.cuda.get_device_capability()
        info["gpu_memory_gib"] = round(torch.cuda.mem_get_info()[1] / 2**30, 1)
    Path(path).write_text(json.dumps(info, indent=1))
    print(json.dumps(info, indent=1))
    return 0


def merge(target, sources):
    """One pytest-benchmark JSON of the benchmark stages' files that exist."""
    merged = None
    for source in map(Path, sources):
        if source.exists():
            data = json.loads(source.read_text())
            if merged is None:
                merged = data
            else:
                merged["benchmarks"] += data["benchmarks"]
    if merged is None:
        print(f"no benchmark results: none of {', '.join(sources)} exists")
        return 1
    Path(target).write_text(json.dumps(merged, indent=1))
    print(f"{len(merged['benchmarks'])} benchmarks in {target}")
    return 0


def load_report_module():
    spec = importlib.util.spec_from_file_location("report", ROOT / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluate_targets(groups, speedups):
    """One row per (target, our backend): the measured figure and whether it holds."""
    rows = []
    for group, figure, least in TARGETS:
        for provider in ("cuda", "triton"):
            bench = groups.get(group, {}).get(provider)
            if bench is None:
                value = None
            elif figure == "fraction_of_copy":
                value = bench["extra_info"].get(figure)
            else:
                value = speedups[group][provider][0 if figure == "vs reference" else 1]
            rows.append({"benchmark": group, "provider": provider, "figure": figure, "at_least": least,
                         "measured": value, "held": None if value is None else value >= least})
    return rows


def report(bench_json, out):
    """OUT/targets.json, and OUT/report.md: benchmarks/report.py's table of every benchmark, then
    each speed target held or missed, and by how much."""
    module = load_report_module()
    _, groups = module.load_groups(bench_json)
    rows = evaluate_targets(groups, module.speedups(groups))
    (Path(out) / "targets.json").write_text(json.dumps(rows, indent=1))
    lines = [module.markdown(groups), "",
             "| target | provider | needed | measured | verdict |", "|---|---|---:|---:|---|"]
    for r in rows:
        if r["measured"] is None:
            verdict, measured = "not measured", ""
        else:
            measured = f"{r['measured']:.3g}"
            verdict = "held" if r["held"] else f"missed: {r['measured'] / r['at_least']:.0%} of the target"
        lines.append(f"| {r['benchmark']}: {r['figure']} | {r['provider']} | {r['at_least']} | {measured} "
                     f"| {verdict} |")
    (Path(out) / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="gpu-check-out", help="folder for the results (logs in stages/)")
    parser.add_argument("--prebuilt", action="store_true",
                        help="check the carried in-place build (of these sources) instead of building, where it fits "
                             "this GPU and torch")
    parser.add_argument("--bundle", type=Path, help="also write gpu-check.tar.gz and the summary here")
    parser.add_argument("--dry-run", action="store_true", help="check every stage's command line, without a GPU")
    parser.add_argument("--stages", help="comma-separated stages to run (env always runs)")
    parser.add_argument("--budget", action="append", default=[], metavar="STAGE=SECONDS",
                        help="another time budget for a stage")
    parser.add_argument("--probe", metavar="JSON", help=argparse.SUPPRESS)
    parser.add_argument("--merge", nargs="+", metavar="JSON", help=argparse.SUPPRESS)
    parser.add_argument("--report", nargs=2, metavar=("JSON", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        return probe(args.probe)
    if args.merge:
        return merge(args.merge[0], args.merge[1:])
    if args.report:
        return report(*args.report)
    ctx = Context(out=(ROOT / args.out).resolve(), prebuilt=args.prebuilt)
    names = [s.name for s in stages(ctx)]
    only = set(args.stages.split(",")) if args.stages else set()
    budgets = {}
    for item in args.budget:
        name, _, seconds = item.partition("=")
        if name not in names or not seconds.isdigit():
            parser.error(f"--budget expects STAGE=SECONDS with STAGE one of {names}, got {item!r}")
        budgets[name] = int(seconds)
    if only - set(names):
        parser.error(f"--stages: unknown {sorted(only - set(names))}; stages are {names}")
    if args.dry_run:
        return dry_run(ctx)
    return run(ctx, only, budgets, args.bundle)


if __name__ == "__main__":
    sys.exit(main())
