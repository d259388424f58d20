"""The EEG and the music: reading NMED-T, simulating it, preprocessing, caching, and cutting windows.

``nmedt`` / ``matfile`` / ``recordings`` read a folder in the real formats; ``music`` /
``forward_model`` / ``simulate`` write the embedded default in the same formats; ``preprocessing`` →
``cache`` → ``windows`` / ``pairing`` make the training examples; ``song_audio`` serves the songs to a
backbone; ``summary`` is what notebook 01 looks at.
"""
