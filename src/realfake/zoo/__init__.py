"""The generator zoo: small image generators trained on REAL images only, so that a detector can be judged on
fakes from generators it never saw, one family at a time (issue 28).

- `families`: the six families by name, each making pixels its own way. Generator sizes (parameters; fp16 size):
  gan-transposed 587,907 (1.1 MiB; transposed conv, batch norm, hinge), gan-nearest 418,563 (0.8 MiB; nearest +
  conv, group norm, non-saturating), gan-bilinear 418,227 (0.8 MiB; bilinear + conv, no norm, hinge),
  gan-subpixel 521,299 (1.0 MiB; PixelShuffle, batch norm, LeakyReLU, non-saturating), vae 587,907 (1.1 MiB;
  decoder, group norm, MSE + KL), ddpm 854,163 (1.6 MiB; U-Net denoiser, group norm, epsilon MSE). The GANs
  learn against a spectral-norm discriminator and keep EMA weights. The held-out ganC data is also a sub-pixel
  GAN, but none of the zoo's: it stays outside as a check.
- `train`: `realfake zoo train` (REAL images only; byte-identical weights for the same seed on the CPU).
- `weights`: one safetensors file per generator, its header naming family, settings, seed, steps and data size.
- `sample`: `realfake zoo sample`, JPEG q75 files in `FAKE/<family>/` of a folder or zip.

How long each family takes to train on a CPU is a measurement, kept with its command in
`research/results/zoo-step-time-*.json` (`python -m research.zoo_step_time`), not here.
"""

__side__ = "shared"  # see tests/test_layers.py
