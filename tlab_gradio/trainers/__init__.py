"""Trainer programs: plain scripts that `accelerate launch` runs on a job folder."""
