"""Training: one Trainer for every task (stage 1, the prior, the evaluation's classifier), the
tasks' objectives, optimizer, masking, checkpoints, and the stored joint codes."""
