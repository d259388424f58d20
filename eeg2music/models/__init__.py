"""The models: the audio front end, the diffusion backbone, the EEG ControlNet and its parts, the ConvNet
baseline, the aligner, and the model-folder contract that training writes and sampling reads.
"""
