"""eeg2music — naturalistic music decoding from EEG with latent diffusion.

Implements and extends Postolache et al., "Naturalistic Music Decoding from EEG Data via Latent
Diffusion Models" (arXiv 2405.09062, ICASSP 2025). One module per stage of the data flow:

``nmedt`` / ``simulate`` → ``preprocess`` → ``windows`` → ``audio`` / ``backbone`` → ``controlnet``
→ ``train`` → ``sample`` → ``embedders`` / ``metrics``.

Importing the package changes nothing in the process's environment. The functions that import or load
laion_clap, transformers or an AudioLDM2 folder first make the Hugging Face libraries offline, unless
the environment already says otherwise (:func:`eeg2music._compat.hub_offline`): a hub look-up otherwise
retries for minutes on a machine without internet. ``make``, ``.ci/run`` and the tests export
``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` for the whole run.
"""

__version__ = "0.1.0"
