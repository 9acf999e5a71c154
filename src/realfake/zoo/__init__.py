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

Time on the CPU, an extrapolation and not a measured training: 20 steps of batch 64 per family on a 2-core AMD
EPYC (torch 2.14, 2 threads) shared with other work (load average 3-4), extrapolated to 5,000 steps (about 6.4
epochs of CIFAR-10's 50,000 images; the stand-in's own FAKE generator had 6,700): gan-transposed 0.47 s/step
(~40 min), gan-nearest 0.55 (~46 min), gan-bilinear 0.82 (~69 min), gan-subpixel 0.48 (~40 min), vae 0.11
(~9 min), ddpm 2.96 (~4 h; diffusion usually wants more steps still). On a quiet machine expect less; on a GPU
(`--device cuda`) minutes, not measured here.
"""
