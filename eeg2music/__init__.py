"""eeg2music — naturalistic music decoding from EEG with latent diffusion.

Implements and extends Postolache et al., "Naturalistic Music Decoding from EEG Data via Latent
Diffusion Models" (arXiv 2405.09062, ICASSP 2025). Folders by role, in the order of the data flow
(docs/ARCHITECTURE.md):

``data`` (NMED-T reader, simulator, preprocessing, cache, windows) → ``models`` (backbone, projector,
subject layer, ControlNet, ConvNet, aligner) → ``training`` → ``sampling`` → ``evaluation``; beside them
``audio`` (the shared audio front end), ``plots``, ``run_inputs`` (a run's default inputs), ``checks`` and
``params`` (notebook parameters), ``train`` (the command line) and ``demo``.

Importing the package changes nothing in the process's environment. The functions that import or load
laion_clap, transformers or an AudioLDM2 folder first make the Hugging Face libraries offline, unless
the environment already says otherwise (:func:`eeg2music._compat.hub_offline`): a hub look-up otherwise
retries for minutes on a machine without internet. ``make``, ``.ci/run`` and the tests export
``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` for the whole run.
"""

__version__ = "0.1.0"
