"""StyleGAN2 for brain MRI synthesis: model, losses, data, training loop and command line
(`python -m stylegan2`). The custom ops live in the separate package `stylegan2_ops`."""
