"""Is the output a picture or noise? A detector that needs no reference, so it can fail a run that matches one.

- detector.py: `detect_noise`, `NoiseVerdict`, `Thresholds`, `noise_section` (report.json's "noise");
- image_stats.py: the statistics it judges by (spectral slope, kurtosis, neighbour correlation...);
- features.py: the named statistics of the learned decoded_noise check (block contrast, colour, saturation...);
- learned.py + learned_model.json: that check's logistic heads and their envelope (when a head abstains),
  fitted by scripts/train_noise_model.py;
- latent_stats.py + latent_check.py: the latent check, the latents a pipeline hands its VAE read against the
  VAE's signature (`judge_latents`, `LatentSignature`, `combine` into a report's noise section);
- overrule.py: an image flag by the `noise_latents` head alone, overruled where the latents pass the latent check
  with this VAE's pattern (`combine` applies it; report.json native["overruled"]);
- formatting.py: numbers in reasons and JSON.
"""
