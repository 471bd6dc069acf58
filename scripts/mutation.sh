#!/usr/bin/env bash
# Mutation score of the native FLUX DiT, RoPE, flow-match scheduler and FLUX pipeline against the parity cases.
#
#   scripts/mutation.sh              # fresh run: mutants/ rebuilt, every mutant tested, score + survivors printed
#   scripts/mutation.sh --resume     # keep mutants/ and mutmut's cached verdicts, test only what is left
#   scripts/mutation.sh --measure    # + run every survivor through the measurement requests (rel_l2 / threshold)
#
# What is mutated and which tests may kill is [tool.mutmut] in pyproject.toml (parity comparisons against Diffusers
# only). Needs `pip install -e ".[mutation]"` (mutmut 3.8.1). About 5-7 minutes on 2 quiet CPU cores (25 under
# heavy load), --measure about 6 more; not run in CI.
# Results: mutants/ (mutmut's cache), mutants/killed_by.tsv (first failing test per killed mutant),
# mutants/mutation-summary.json, mutants/mutation-survivors.md (the survivors' classification table, as in
# docs/mutation-report.md; classes from scripts/mutation_classes.py).
set -euo pipefail
cd "$(dirname "$0")/.."

resume=0
measure=()
for arg in "$@"; do
    case "$arg" in
        --resume) resume=1 ;;
        --measure) measure=(--measure) ;;
        *) echo "scripts/mutation.sh: unknown argument '$arg' (use --resume, --measure)" >&2; exit 2 ;;
    esac
done
if [[ ! -x .venv/bin/mutmut ]]; then
    echo "scripts/mutation.sh: mutmut is not installed: .venv/bin/pip install -e '.[mutation]'" >&2
    exit 2
fi

export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1
if [[ $resume == 0 ]]; then
    rm -rf mutants
fi
# mutmut's progress line is a spinner: keep its log out of the terminal, print the verdicts below instead
mkdir -p mutants
.venv/bin/python -m scripts.mutation_report --snapshot   # the report's line numbers refer to this copy
start=$(date +%s)
if ! .venv/bin/mutmut run --max-children "${MUTATION_CHILDREN:-2}" > mutants/mutmut-run.log 2>&1; then
    tail -c 3000 mutants/mutmut-run.log >&2
    echo "scripts/mutation.sh: mutmut run failed (full log: mutants/mutmut-run.log)" >&2
    exit 1
fi
echo "mutmut run: $(( $(date +%s) - start )) s"
.venv/bin/python -m scripts.mutation_report "${measure[@]}" --json mutants/mutation-summary.json \
    --markdown mutants/mutation-survivors.md
