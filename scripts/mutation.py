"""Mutation testing with cosmic-ray: do the tests catch small, plausible bugs?

    pip install -e ".[test,mutation]"                          # cosmic-ray, once

    nice python scripts/mutation.py --out /tmp/mut-head        # HEAD, a sample of each group's mutants
    nice python scripts/mutation.py --rev 2f947fb --out /tmp/mut-old   # the same sample rules on another commit
    nice python scripts/mutation.py --survivors-of /tmp/mut-old --out /tmp/mut-new  # only what survived there
    nice python scripts/mutation.py --sample 1 --groups generate  # every mutant of one group
    nice python scripts/mutation.py --tests-rev 2f947fb --out /tmp/mut-before  # HEAD's code, older tests
    nice python scripts/mutation.py --groups model --tests tests/test_canvas.py -k 'not canvas-4x'  # quicker tests
    python scripts/mutation.py --report OUT_DIR     # print the table of a finished run again

Each group of modules is mutated in a scratch copy of the repository at ``--rev`` (``git
archive``), so the working tree is never touched and the run can go on while you work; one
cosmic-ray session per group runs that group's own tests (``GROUPS``), stopping at the first
failure. The mutation operators are the one-step changes a person could make by mistake
(``OPERATORS``: + for -, < for <=, True for False, a number off by one, a dropped ``not``, a
loop that never runs, ...), not cosmic-ray's full cross product of binary operators.

A whole run is several thousand mutants at 10-60 s each (a pytest process per mutant), so by
default a deterministic sample is run: a mutant is in it when a hash of (file, operator, the
text of the mutated line, its occurrence among equal lines) falls under the sampling rate, so
the same mutants are drawn on two commits wherever their line did not change, and kill rates
before and after a change compare like with like. ``--tests-rev`` keeps the code at ``--rev``
and takes ``tests/`` from another commit: the very same mutants judged by other tests, which is
how a before/after of new tests is measured (older tests that no longer run on the newer code,
failing or not collected, are left out and named in ``OUT/<group>.meta.json``).

The run is resumable: run it again with the same ``--out`` and it goes on where it stopped, on
the commits it started with (``OUT/revs.json``). Run it with ``nice``; it takes the machine's
cores one pytest at a time. On a shared machine run it in sittings of at most 15 minutes (under
whatever lock keeps benchmarks apart there) and let the next one resume:
``timeout -s INT 840 nice python scripts/mutation.py --out OUT ...``
(SIGINT: cosmic-ray puts the mutated file back). Never part of ``.ci/run``.

Output: ``OUT/<group>.sqlite`` (cosmic-ray's session), ``OUT/report.md`` (kill rate per group
and every surviving mutant as a diff), ``OUT/report.json``.
"""

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# group -> (files to mutate (globs), the tests that guard them, default sampling rate). The rates
# give each group 5-16 mutants (of 60-900 eligible): a group's tests take 4-20 minutes on a
# loaded 2-core machine, and a surviving mutant runs all of them.
GROUPS = {  # quickest first
    "generate": (["mlx_minicpmv/generate.py"], ["tests/test_sampling.py", "tests/test_generate.py",
                                                "tests/test_feature_cache.py", "tests/test_bad_input.py"],
                 0.1),  # test_bad_input: the command line's media warnings (a short video read)
    "loading": (["mlx_minicpmv/loading.py"], ["tests/test_loading.py", "tests/test_convert.py",
                                              "tests/test_stored_precision.py"], 0.08),
    "convert": (["mlx_minicpmv/convert.py"], ["tests/test_convert.py"], 0.08),
    "app": (["app/history.py", "app/worker.py"], ["tests/test_history.py", "tests/test_app_history.py",
                                                  "tests/test_app_worker.py", "tests/test_app_widgets.py",
                                                  "tests/test_app.py"], 0.05),
    "summary": (["mlx_minicpmv/summary/*.py", "mlx_minicpmv/summarize.py"], ["tests/test_summary.py"], 0.03),
    "processing": (["mlx_minicpmv/processing/*.py"], ["tests/test_processor.py", "tests/test_generate.py"], 0.01),
    # The model group's tests quickest first (-x stops at the first failure); canvas.py and
    # kernel_layers.py are guarded by test_canvas and test_cpu_kernels. 2026-12-03's run added
    # -k 'not (alt- or canvas-4x)' (one 4.6 and one 4.7 config of the parity tests): 54 s clean.
    "model": (["mlx_minicpmv/model/*.py", "mlx_minicpmv/cpu/*.py", "mlx_minicpmv/config.py"],
              ["tests/test_cpu_math.py", "tests/test_gated_delta.py", "tests/test_gemv.py",
               "tests/test_cpu_kernels.py", "tests/test_model_variants.py", "tests/test_canvas.py",
               "tests/test_model.py"], 0.01),
}
# Tests left out of mutation runs: minutes each, and guarding memory or pixel budgets rather
# than the logic a one-token mutation changes.
SLOW = ["test_memory_stays_bounded_on_a_long_video", "test_huge_jpeg_is_decoded_reduced_with_the_reference_plan",
        "test_beyond_exact_pixel_budget_is_reduced_first"]

OPERATORS = {f"core/{name}" for name in [
    "ReplaceBinaryOperator_Add_Sub", "ReplaceBinaryOperator_Sub_Add", "ReplaceBinaryOperator_Mul_Div",
    "ReplaceBinaryOperator_Div_Mul", "ReplaceBinaryOperator_FloorDiv_Div", "ReplaceBinaryOperator_Mod_FloorDiv",
    "ReplaceBinaryOperator_Pow_Mul",
    "ReplaceComparisonOperator_Eq_NotEq", "ReplaceComparisonOperator_NotEq_Eq", "ReplaceComparisonOperator_Lt_LtE",
    "ReplaceComparisonOperator_LtE_Lt", "ReplaceComparisonOperator_Gt_GtE", "ReplaceComparisonOperator_GtE_Gt",
    "ReplaceComparisonOperator_Is_IsNot", "ReplaceComparisonOperator_IsNot_Is",
    "ReplaceUnaryOperator_USub_UAdd", "ReplaceUnaryOperator_Delete_Not",
    "AddNot", "ReplaceTrueWithFalse", "ReplaceFalseWithTrue", "ReplaceAndWithOr", "ReplaceOrWithAnd",
    "ReplaceBreakWithContinue", "ReplaceContinueWithBreak", "ExceptionReplacer", "NumberReplacer",
    "ZeroIterationForLoop", "RemoveDecorator",
]}


def tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def commit(rev: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                          check=True, capture_output=True, text=True).stdout.strip()


def checkout(rev: str, into: Path, paths=()) -> Path:
    """The repository's files at ``rev`` (committed state only; ``paths`` alone if given) in ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, *paths], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def swap_tests(src: Path, rev: str) -> None:
    """``src/tests`` as it was at ``rev``: the code stays, the tests judging it are the older ones."""
    shutil.rmtree(src / "tests")
    checkout(rev, src, ["tests"])


def group_files(src: Path, globs):
    return sorted(str(p.relative_to(src)) for g in globs for p in src.glob(g) if p.name != "__init__.py")


def pytest_command(tests, deselect=(), exitfirst=True, keyword=None) -> list:
    chosen = f"not ({' or '.join(SLOW)})" + (f" and ({keyword})" if keyword else "")
    return [sys.executable, "-m", "pytest", *(["-x"] if exitfirst else []), "-q", "-p", "no:cacheprovider",
            *tests, f"-k '{chosen}'", *(f"--deselect '{t}'" for t in deselect)]


def write_config(path: Path, files, tests, timeout: float, deselect=(), keyword=None) -> None:
    command = " ".join(pytest_command(tests, deselect, keyword=keyword))
    path.write_text(
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(files)}\n"
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(command)}\n\n"
        "[cosmic-ray.distributor]\nname = \"local\"\n"
    )


def sample_key(src: Path, spec, seen: dict) -> str:
    """What identifies a mutant across commits: file, operator, mutated line's text, and its
    occurrence among mutants with the same three (line numbers move when code is added)."""
    lines = (src / spec.module_path).read_text().splitlines()
    text = lines[spec.start_pos[0] - 1].strip()
    base = (str(spec.module_path), spec.operator_name, text)
    seen[base] = seen.get(base, -1) + 1
    return "|".join(map(str, base + (seen[base],)))


def survivor_keys(previous: Path, name: str) -> set:
    """Sample keys of the mutants that survived in an earlier run's group ``name``."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome

    db_path = previous / f"{name}.sqlite"
    if not db_path.exists():
        raise SystemExit(f"{db_path} does not exist: --survivors-of needs a finished run of group {name}")
    keys, seen = set(), {}
    with use_db(str(db_path), WorkDB.Mode.open) as db:
        done = dict(db.results)
        for item in sorted(db.work_items, key=item_order):
            spec = item.mutations[0]
            if spec.operator_name not in OPERATORS:
                continue
            key = sample_key(previous / "src", spec, seen)
            r = done.get(item.job_id)
            if r is not None and r.test_outcome == TestOutcome.SURVIVED:
                keys.add(key)
    return keys


def item_order(w):
    m = w.mutations[0]
    return (str(m.module_path), m.start_pos, m.operator_name, m.occurrence)


def select(db_path: Path, src: Path, rate: float, only=None) -> tuple:
    """Skip every mutant outside ``OPERATORS`` and the hash sample (or outside ``only``, a set of
    sample keys); returns (kept, total of OPERATORS)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(db_path), WorkDB.Mode.open) as db:
        items = sorted(db.work_items, key=item_order)
        seen, skip, kept, eligible = {}, [], 0, 0
        for item in items:
            spec = item.mutations[0]
            if spec.operator_name not in OPERATORS:
                skip.append(item.job_id)
                continue
            eligible += 1
            key = sample_key(src, spec, seen)
            h = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
            if (only is not None and key not in only) or (only is None and rate < 1.0 and h >= rate):
                skip.append(item.job_id)
            else:
                kept += 1
        if skip:
            db.set_multiple_results(skip, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
    return kept, eligible


def baseline_seconds(src: Path, config: Path) -> float:
    from cosmic_ray.config import load_config

    command = load_config(str(config)).test_command
    tic = time.perf_counter()
    result = subprocess.run(command, shell=True, cwd=src, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"the unmutated tests fail in {src}; fix that first:\n{result.stdout[-3000:]}")
    return time.perf_counter() - tic


def not_running(src: Path, tests, keyword=None) -> tuple:
    """Older tests (``--tests-rev``) that fail on the clean code, and test files that do not even
    collect: a mutant cannot be judged by a test that fails without it."""
    broken = []
    for t in tests:
        collect = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", t],
                                 cwd=src, capture_output=True, text=True)
        if collect.returncode != 0:
            broken.append(t)
    tests = [t for t in tests if t not in broken]
    if not tests:
        return tests, broken, []
    command = " ".join(pytest_command(tests, exitfirst=False, keyword=keyword)) + " -rf"
    result = subprocess.run(command, shell=True, cwd=src, capture_output=True, text=True)
    failing = [line.split()[1] for line in result.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    return tests, broken, failing


def run_group(name: str, rev: str, src: Path, out: Path, rate=None, previous=None, tests=None, older_tests=False,
              keyword=None) -> None:
    files, group_tests, default_rate = GROUPS[name]
    rate = default_rate if rate is None else rate
    files = group_files(src, files)
    tests = [t for t in (tests or group_tests) if (src / t.split("::")[0]).exists()]
    config, db = out / f"{name}.toml", out / f"{name}.sqlite"
    if not db.exists():
        broken, failing = [], []
        if older_tests:
            tests, broken, failing = not_running(src, tests, keyword)
        if not tests:
            raise SystemExit(f"[{name}] none of the group's tests run on this code: {broken}")
        write_config(config, files, tests, timeout=600, deselect=failing, keyword=keyword)
        took = baseline_seconds(src, config)
        write_config(config, files, tests, timeout=max(120.0, 3 * took), deselect=failing, keyword=keyword)
        fresh = db.with_suffix(".init.sqlite")  # becomes the session once sampled: a stop before that starts over
        fresh.unlink(missing_ok=True)
        subprocess.run([tool("cosmic-ray"), "init", str(config), str(fresh)], cwd=src, check=True)
        only = survivor_keys(previous, name) if previous else None
        kept, eligible = select(fresh, src, rate, only)
        fresh.rename(db)
        (out / f"{name}.meta.json").write_text(json.dumps(dict(
            files=files, tests=tests, keyword=keyword, baseline_seconds=round(took, 1), sampled=kept, eligible=eligible,
            left_out=dict(not_collected=broken, failing=failing))))
        print(f"[{name}] {kept} of {eligible} mutants sampled; the clean tests take {took:.0f} s", flush=True)
    # A run stopped mid-mutant (timeout -s INT, Ctrl-C) restores the file, but be sure before resuming.
    checkout(rev, src, files)
    subprocess.run([tool("cosmic-ray"), "exec", str(config), str(db)], cwd=src, check=True)


def results(out: Path) -> dict:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    table = {}
    for db_path in sorted(out.glob("*.sqlite")):
        name = db_path.stem
        meta = json.loads((out / f"{name}.meta.json").read_text())
        killed, survived, pending = 0, [], 0
        with use_db(str(db_path), WorkDB.Mode.open) as db:
            done = {job: r for job, r in db.results}
            for item in db.work_items:
                r = done.get(item.job_id)
                if r is not None and r.worker_outcome == WorkerOutcome.SKIPPED:
                    continue
                if r is None:
                    pending += 1
                elif r.test_outcome == TestOutcome.SURVIVED:
                    spec = item.mutations[0]
                    survived.append(dict(file=str(spec.module_path), line=spec.start_pos[0],
                                         operator=spec.operator_name.removeprefix("core/"), diff=r.diff))
                else:
                    killed += 1
        table[name] = dict(meta, killed=killed, survived=survived, pending=pending)
    return table


def report(out: Path) -> str:
    table = results(out)
    pinned = out / "revs.json"
    lines = []
    if pinned.exists():
        rev, tests_rev = json.loads(pinned.read_text())
        lines += [f"code at {rev[:10]}, tests at {(tests_rev or rev)[:10]}", ""]
    lines += ["| group | files | mutants run | killed | kill rate | pending |", "|---|---|---|---|---|---|"]
    for name, r in table.items():
        n = r["killed"] + len(r["survived"])
        rate = f"{100 * r['killed'] / n:.0f}%" if n else "-"
        lines.append(f"| {name} | {len(r['files'])} | {n} (of {r['eligible']}) | {r['killed']} | {rate} | {r['pending']} |")
    lines.append("")
    for name, r in table.items():
        for s in r["survived"]:
            diff = "\n".join(l for l in (s["diff"] or "").splitlines() if l.startswith(("+", "-"))
                             and not l.startswith(("+++", "---")))
            lines += [f"### {name}: {s['file']}:{s['line']} ({s['operator']})", "```diff", diff, "```", ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps(table, indent=1))
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="HEAD", help="The commit to mutate (default HEAD; uncommitted edits are not seen).")
    parser.add_argument("--groups", nargs="*", default=list(GROUPS), choices=list(GROUPS))
    parser.add_argument("--sample", type=float, default=None,
                        help="Fraction of the eligible mutants to run in every group (1: all); default: GROUPS' own.")
    parser.add_argument("--survivors-of", type=Path, default=None,
                        help="Run only the mutants that survived in this earlier run (same sample rules): "
                             "what new tests caught, without running again what was caught before.")
    parser.add_argument("--tests-rev", default=None,
                        help="Take tests/ from this commit instead of --rev's: the same mutants judged by older tests.")
    parser.add_argument("--tests", nargs="*", default=None,
                        help="Test files to run instead of the group's own (GROUPS), e.g. the quickest ones of a slow group.")
    parser.add_argument("-k", "--keyword", default=None,
                        help="Only the tests pytest's -k expression selects (e.g. one config of a parametrised parity test).")
    parser.add_argument("--out", type=Path, default=None, help="Where sessions and reports go (default: a new temp dir).")
    parser.add_argument("--report", type=Path, default=None, help="Only print the report of a run in this directory.")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.report))
        return 0
    if shutil.which("git") is None:
        raise SystemExit("git is needed (the run mutates a `git archive` copy of --rev)")
    out = (args.out or Path(tempfile.mkdtemp(prefix="mutation-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    src, pinned = out / "src", out / "revs.json"
    if pinned.exists():  # a resumed run goes on with the commits it started on, wherever HEAD is now
        args.rev, args.tests_rev = json.loads(pinned.read_text())
    else:
        args.rev, args.tests_rev = (commit(r) if r else None for r in (args.rev, args.tests_rev))
        shutil.rmtree(src, ignore_errors=True)
        checkout(args.rev, src)
        if args.tests_rev:
            swap_tests(src, args.tests_rev)
        pinned.write_text(json.dumps([args.rev, args.tests_rev]))
    rate = args.sample
    tests_from = f" judged by the tests of {args.tests_rev}" if args.tests_rev else ""
    print(f"mutating {args.rev}{tests_from} in {src}; sessions in {out}", flush=True)
    for name in args.groups:
        run_group(name, args.rev, src, out, rate, args.survivors_of, args.tests, older_tests=bool(args.tests_rev),
                  keyword=args.keyword)
        print(report(out).split("\n### ")[0], flush=True)
    print(report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
