"""Module-level localization of a divergence: from "denoise, step 0" to "transformer_blocks.1.attn".

- target.py: `DrillTarget`, `resolve_target` (a record -> the component call to re-run), `DrillError`;
- capture.py: `ComponentProbe`, the reference's inputs to that call, captured from a reference run;
- alignment.py: `ComponentAlignment`, `ModuleRule`, `register_alignment` (the per-family maps), `map_call`;
- outputs.py: `flatten` / `pair` of module results; metrics.py: chunked metrics; store.py: `OutputStore`;
- engine.py: `DrillPasses` (the module-level forced pass and the free pass);
- floors.py: `ModuleFloors`, `load_module_floors` (per-module thresholds);
- result.py: `DrillResult` (entries in execution order, the verdict, the ranking; plain data);
- session.py: `run_drill`, `drill_first_divergence`; multirank.py: `drill_ranks` (a run on tp x sp ranks);
- parity_hook.py: `drill_on_failure`, the `run_parity` extension that drills a failing run;
- format.py: `format_drill` (terminal); artifacts.py: `write_drill_artifacts` (drill.json, .md, .html).

docs/drill.md explains the method, the alignment maps, the floors and report.json's `drill` section.
"""
