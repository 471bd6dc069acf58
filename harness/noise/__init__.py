"""Is the output a picture or noise? A detector that needs no reference, so it can fail a run that matches one.

- detector.py: `detect_noise`, `NoiseVerdict`, `Thresholds`, `noise_section` (report.json's "noise");
- image_stats.py: the statistics it judges by (spectral slope, kurtosis, neighbour correlation...).
"""
