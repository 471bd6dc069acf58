"""Stored reference results: goldens (a case's reference trace, checked without Diffusers) and calibrated floors.

- errors.py: `GoldenError`, `GoldenMissing`, `GoldenCorrupt`;
- store.py: where goldens live (`golden_path`, `scan_goldens`, `default_root`);
- model.py: `Golden`, `GoldenRecord`, `golden_from_trace`; request_json.py: `request_from_dict`;
- file_format.py: `write_golden`, `read_golden` (every byte hashed and checked);
- record.py: `record_golden`, `promote_golden`, `largest_change`;
- verify.py: `verify_golden`, `compare_with_golden`, `check_checkpoint`;
- checkpoint_identity.py: `checkpoint_identity`, what makes two checkpoints the same;
- calibrate.py: `calibrate`, the floor of every record measured by the reference against itself, written under
  golden/tolerances/ (harness/compare/tolerances.py reads it);
- model_calibration.py: a user's checkpoint calibrated and found again by its identity (`model_tolerance_spec`).
- module_floors.py: `calibrate_modules`, every module's floor for the drill (harness/drill/), measured by drilling
  the reference against itself, written beside the stage floors (harness/drill/floors.py reads it).
"""
