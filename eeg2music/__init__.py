"""eeg2music — naturalistic music decoding from EEG with latent diffusion.

Implements and extends Postolache et al., "Naturalistic Music Decoding from EEG Data via Latent
Diffusion Models" (arXiv 2405.09062, ICASSP 2025). One module per stage of the data flow:

``nmedt`` / ``simulate`` → ``preprocess`` → ``windows`` → ``audio`` / ``backbone`` → ``controlnet``
→ ``train`` → ``sample`` → ``embedders`` / ``metrics``.

Importing the package makes the process offline for the Hugging Face libraries (no hub look-ups,
which otherwise retry for minutes on a machine without internet).
"""

import os as _os

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    _os.environ.setdefault(_var, "1")
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
