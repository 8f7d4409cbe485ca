"""The hand-made mutations of issue 18, each checked against the tests that must catch it.

    nice python scripts/mutation_checks.py              # all of them
    nice python scripts/mutation_checks.py cache-key-model scene-cut-early

Each check copies the working tree (tracked and untracked files, not the virtual environments)
into a scratch directory, replaces one exact piece of source text there and runs its tests:
every one of them must fail (each listed test catches the mutation on its own). The same tests are run on the unchanged copy first and
must pass. A check whose text is no longer found fails loudly: when code moves (a refactor),
update ``find``/``replace`` to the new structure, not the tests' expectations.

Checks with ``args=["-m", "torchvision"]`` need the torchvision venv's Python (see
scripts/test_torchvision.sh): ``.venv-torchvision/bin/python scripts/mutation_checks.py video-...``.

``scripts/mutation.py`` is the tool-made counterpart (cosmic-ray over whole modules).
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from mutation_list import MUTATIONS  # noqa: E402


def copy_tree(into: Path) -> Path:
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"], check=True,
                           capture_output=True, text=True).stdout.splitlines()
    for name in files:
        if (REPO / name).is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, into / name)
    return into


def pytest(src: Path, tests, args=()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *args, *tests],
                          cwd=src, capture_output=True, text=True)


def check(m: dict, src: Path) -> str:
    file = src / m["file"]
    original = file.read_text()
    if original.count(m["find"]) != 1:
        return f"STALE: the text to mutate occurs {original.count(m['find'])} times in {m['file']}"
    try:
        file.write_text(original.replace(m["find"], m["replace"]))
        mutated = pytest(src, m["tests"], m.get("args", ()))
    finally:
        file.write_text(original)
    failed = [l.split(" ", 1)[1].split(" - ")[0] for l in mutated.stdout.splitlines()
              if l.startswith(("FAILED ", "ERROR "))]
    missed = [t for t in m["tests"] if not any(f == t or f.startswith((t + "::", t + "[")) for f in failed)]
    if mutated.returncode == 0 or missed:
        return f"MISSED by {', '.join(missed) or 'all'}"
    return f"caught by all {len(m['tests'])} ({mutated.stdout.strip().splitlines()[-1]})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="Checks to run (default: all).")
    parser.add_argument("--skip-clean", action="store_true", help="Do not run the tests on the unchanged copy first.")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.names or m["name"] in args.names]
    unknown = set(args.names) - {m["name"] for m in MUTATIONS}
    if unknown:
        raise SystemExit(f"no such check: {', '.join(sorted(unknown))}")
    missed = 0
    with tempfile.TemporaryDirectory(prefix="mutation-checks-") as tmp:
        src = copy_tree(Path(tmp))
        if not args.skip_clean:
            tests = sorted({t for m in chosen for t in m["tests"]})
            clean = pytest(src, tests, sorted({a for m in chosen for a in m.get("args", ())}))
            if clean.returncode != 0:
                print(clean.stdout[-3000:])
                raise SystemExit("the tests fail without any mutation; fix that first")
        for m in chosen:
            verdict = check(m, src)
            missed += not verdict.startswith("caught")
            print(f"{m['name']:32s} {verdict}", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
