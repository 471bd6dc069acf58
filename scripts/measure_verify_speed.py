"""Wall time of `diffparity golden verify CASE` against `diffparity run CASE` (which also runs Diffusers).

Both are timed as whole commands in fresh processes (imports, interpreter start and exit included), the way a
user or CI job pays for them, alternating so that a change in machine load hits both alike. One untimed run of
each first builds the tiny checkpoint and fills the tokenizer cache; `--cold` also times verify with an empty
tokenizer cache (a private $DIFFPARITY_CACHE/tokenizers), which is what the first verify on a machine pays.

    python scripts/measure_verify_speed.py [CASE] [--repeats 5] [--cold] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", nargs="?", default="flux-tiny")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cold", action="store_true", help="also time verify with an empty tokenizer cache")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    cli = str(Path(sys.executable).with_name("diffparity"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="verify-speed-") as scratch:
        run = [cli, "run", args.case, "--out", str(Path(scratch) / "run")]
        verify = [cli, "golden", "verify", args.case]
        _timed(run, env), _timed(verify, env)  # warm-up: checkpoint built, tokenizer cache filled
        times: dict[str, list[float]] = {"run": [], "verify": [], "verify_cold": []}
        for _ in range(args.repeats):
            times["run"].append(_timed(run, env))
            times["verify"].append(_timed(verify, env))
            if args.cold:
                cache = Path(scratch) / "cache"
                shutil.rmtree(cache, ignore_errors=True)
                checkpoints = Path(env.get("DIFFPARITY_CACHE") or "~/.cache/diffparity").expanduser() / "checkpoints"
                cache.mkdir()
                (cache / "checkpoints").symlink_to(checkpoints)  # the same built checkpoint, no tokenizers
                times["verify_cold"].append(_timed(verify, {**env, "DIFFPARITY_CACHE": str(cache)}))
    medians = {name: statistics.median(values) for name, values in times.items() if values}
    result = {"case": args.case, "repeats": args.repeats, "seconds": times, "median_s": medians,
              "speedup": medians["run"] / medians["verify"], "load_average": os.getloadavg()}
    if "verify_cold" in medians:
        result["speedup_cold"] = medians["run"] / medians["verify_cold"]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for name, values in times.items():
        if values:
            print(f"{name:<12} median {medians[name]:.2f} s  ({', '.join(f'{v:.2f}' for v in values)})")
    print(f"verify is {result['speedup']:.2f}x faster than run"
          + (f" ({result['speedup_cold']:.2f}x with a cold tokenizer cache)" if "speedup_cold" in result else ""))


if __name__ == "__main__":
    main()
