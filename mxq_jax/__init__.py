"""MXQ-VAE in JAX/Flax NNX: unconditional generation of image-caption pairs."""
