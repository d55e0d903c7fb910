"""Metrics on real datasets that need published networks: FID (Inception-v3) and CLIP score.

The networks run in JAX from the files their publishers ship (pytorch-fid's .pth, Hugging
Face's safetensors), read with numpy alone, so neither torch nor transformers is needed.
`real_data.fid_and_clip` is the entry point.
"""
