"""Reports of a run, built from the comparison and written beside its traces.

- build.py: `build_report` (the report.json document, stable schema), `stage_summary`, `format_stage_table`;
- view.py: what report.html and report.md both show, read from a report.json document;
- html.py: `render_html`; markdown.py: `render_markdown`; plots.py: the drift plot (SVG);
- images.py: the frames and difference heat-map embedded in report.html; image_metrics.py: PSNR / SSIM;
- artifacts.py: `write_run_artifacts` (traces, images, reports, report.json last, atomically), `write_reports`.
"""
