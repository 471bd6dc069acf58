"""Running a request on both sides.

- request.py: `GenerationRequest`, the one description of a generation both sides execute;
- cases.py: `Case`, `CASES`, `get_case`, `register_case`, `cases_for_family` (the families declare the cases);
- model_case.py: `model_case`, a user's checkpoint as a case (family from model_index.json, its own defaults);
- expectation.py: `resolve_expectation` -> `Expectation`, picture or noise (`--expect`);
- native_runner.py: `plan_native_run` (checks from config files alone), `run_native` (free and forced);
- forcing.py: teacher forcing of the native pipeline from the reference's inputs (`run_forced`, `FORCED_STAGES`);
- multirank.py: the native pipeline on tp x sp ranks (`Topology`, `run_native_ranks`, `RankRun`);
- runners.py: the sides behind one interface (`ReferenceRunner`, `NativeRunner`, `MultiRankRunner` -> `SideRun`);
- parity.py: `run_parity` -> `ParityResult`;
- run_folders.py: the per-run output folders of `diffparity run`.
"""
