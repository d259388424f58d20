"""Sampling reconstructions from EEG: the diffusion pipeline, its inputs, and the clips written to WAV."""
