"""Kernels the model runs under in training and scoring alike: target-token log-probabilities."""
