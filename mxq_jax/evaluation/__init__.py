"""Evaluation of generated pairs: the attribute classifier and caption parser, pair metrics,
stage-1 reconstruction agreement, and FID / CLIP score from published weights."""
