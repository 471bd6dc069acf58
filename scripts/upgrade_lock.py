"""Move requirements.lock forward: a fresh environment at the newest versions pyproject allows, checked on goldens.

    python scripts/upgrade_lock.py [--torch VERSION] [--write | --force] [--keep DIR]

1. Creates a new virtual environment (a temporary folder, or --keep DIR) and installs into it, with pip's own
   resolver and no lock: torch at the locked version (or --torch; the CPU build on a machine without an NVIDIA
   driver, as setup.sh does), then `-e .[test]` at the newest versions the ranges in pyproject.toml admit.
2. `pip freeze` of that environment is the candidate lock; prints every version that moved, appeared or left.
3. Runs the golden checks inside it, with its own tiny-checkpoint cache (a fresh machine builds the tiny
   checkpoints with the new versions): per committed golden, `golden verify` (pass / fail / unusable) and the
   largest change of any record between the committed golden and one recorded again in the new environment.
4. With --write, replaces requirements.lock when every golden verifies (--force: whatever the checks say).

Network: needs the package index (PyPI); not run in CI. Exit 0 when every golden verifies, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
HEADER = (
    "# requirements.lock: the exact versions setup.sh installs (pip install -c requirements.lock -e .[test]).\n"
    "# Every runtime and test dependency, direct and transitive, as resolved by pip from pyproject.toml's ranges.\n"
    "# torch is the CPU build on machines without an NVIDIA driver, the CUDA build of the same version elsewhere.\n"
    "# Do not edit by hand: python scripts/upgrade_lock.py --write (docs/setup-and-lock.md).\n"
)
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")

# Run inside the new environment: verify every committed golden, then record it again and measure the change.
_CHECK = r"""
import sys, tempfile
from pathlib import Path
from harness.golden.errors import GoldenError
from harness.golden.file_format import read_golden
from harness.golden.record import largest_change, record_golden
from harness.golden.store import scan_goldens
from harness.golden.verify import verify_golden
from harness.run.cases import get_case
goldens = [g for g in scan_goldens()[0] if g.kind == "golden" and g.device_class == "cpu"]
bad = 0
drafts = Path(tempfile.mkdtemp())
for g in goldens:
    case = get_case(g.case)
    try:
        ok = verify_golden(case, g.dtype, write_obtained=False).passed
        verdict = "pass" if ok else "FAIL"
    except GoldenError as exc:
        ok, verdict = False, f"UNUSABLE ({str(exc).splitlines()[0][:140]})"
    new = record_golden(case, g.dtype, root=drafts)
    change = largest_change(read_golden(g.path), new)
    if change is None:
        moved = "no records"
    elif change[1] == 0.0:
        moved = "none: every record bit-identical"
    else:
        moved = f"{change[0]} rel_l2 {change[1]:.2e}"
    print(f"  {g.case:14s} {g.dtype:5s} verify {verdict:6s} largest record change {moved}", flush=True)
    bad += not ok
sys.exit(1 if bad else 0)
"""


def read_pins(text: str) -> dict[str, str]:
    """{normalised name: version} of a lock or `pip freeze` text; comments and editable lines ignored."""
    pins = {}
    for line in text.splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def normalise(name: str) -> str:
    """PEP 503 name normalisation, so `Jinja2` and `jinja2` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_text(freeze: str) -> str:
    """The lock file for a `pip freeze` output: sorted pins, torch without its local build label (+cpu)."""
    pins = read_pins(freeze)
    pins.pop("diffparity", None)
    pins.pop("pip", None)  # the installer, not a dependency (setuptools is one: torch requires it)
    if "torch" in pins:
        pins["torch"] = pins["torch"].split("+")[0]  # `torch==2.13.0` admits 2.13.0+cpu and the CUDA build alike
    return HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """One line per package whose locked version moved, appeared or left."""
    lines = []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name), new.get(name)
        if before != after:
            lines.append(f"  {name:28s} {before or '(new)':>16s} -> {after or '(removed)'}")
    return lines


def run(command: list[str], **kwargs) -> None:
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, check=True, **kwargs)


def build_environment(venv: Path, torch_version: str) -> str:
    """A new venv with torch and `-e .[test]` at the newest allowed versions; returns its `pip freeze`."""
    run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    run(pip + ["--upgrade", "pip"])
    if shutil.which("nvidia-smi"):
        run(pip + [f"torch=={torch_version}"])
    else:
        try:
            run(pip + [f"torch=={torch_version}"])
        except subprocess.CalledProcessError:
            run(pip + [f"torch=={torch_version}", "--index-url", "https://download.pytorch.org/whl/cpu"])
    run(pip + ["-e", f"{ROOT}[test]"])
    freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze", "--all", "--exclude-editable"],
                            check=True, capture_output=True, text=True)
    return freeze.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch", help="torch version of the new lock (default: the locked one)")
    parser.add_argument("--write", action="store_true", help="replace requirements.lock if every golden verifies")
    parser.add_argument("--force", action="store_true", help="replace requirements.lock whatever the checks say")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="build the environment in DIR and keep it")
    args = parser.parse_args(argv)

    old = read_pins(LOCK.read_text()) if LOCK.is_file() else {}
    torch_version = args.torch or old.get("torch")
    if not torch_version:
        parser.error("requirements.lock names no torch version: pass --torch VERSION")
    work = args.keep or Path(tempfile.mkdtemp(prefix="diffparity-lock-"))
    try:
        print(f"upgrade_lock: fresh environment in {work / 'venv'} (torch {torch_version})", flush=True)
        candidate = lock_text(build_environment(work / "venv", torch_version))
        new = read_pins(candidate)
        moved = changes(old, new)
        print(f"upgrade_lock: {len(moved)} of {len(new)} locked packages changed" + (":" if moved else ""))
        print("\n".join(moved)) if moved else None
        print("upgrade_lock: golden checks in the new environment (verify; largest change on re-recording)",
              flush=True)
        env = dict(os.environ, DIFFPARITY_CACHE=str(work / "cache"), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
        checks = subprocess.run([str(work / "venv" / "bin" / "python"), "-c", _CHECK], cwd=ROOT, env=env)
        passed = checks.returncode == 0
        print(f"upgrade_lock: goldens {'all verify' if passed else 'do NOT all verify'}")
        if args.force or (args.write and passed):
            LOCK.write_text(candidate)
            print(f"upgrade_lock: wrote {LOCK.relative_to(ROOT)}; run ./setup.sh to install it")
        elif args.write:
            print("upgrade_lock: requirements.lock left as it was (--force writes it anyway)")
        else:
            print("upgrade_lock: dry run; --write replaces requirements.lock")
        return 0 if passed else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
