"""Audio embedders for the metrics: LAION-CLAP and EnCodec (the paper's), AudioLDM2's CLAP, and an offline set.

An *embedder* turns a batch of clips into one vector per clip; :mod:`eeg2music.evaluation.metrics` compares those
vectors. Every embedder follows the :class:`Embedder` protocol:

* ``name`` — how tables and files call it (``"laion-clap"``, ``"encodec"``, ``"audioldm2-clap"``,
  ``"mel-stats"``, ``"mel-envelope"``, ``"vae-latent"``);
* ``sample_rate`` — the rate its network runs at (Hz); ``dim`` — the embedding size;
* ``standardize`` — whether its dimensions have different units, so the metrics should z-score them
  first (``evaluate_embeddings(..., standardize=embedder.standardize)``);
* ``embed(waves, sample_rate=16000) -> ndarray (B, dim)`` — ``waves`` is a ``(B, samples)`` array (or
  tensor) of mono clips at ``sample_rate``, by default the project's 16 kHz; the embedder resamples
  to its own rate with soxr (through librosa) — never with torchaudio;
* optionally ``embed_frames(waves, sample_rate=16000) -> ndarray (B, frames, dim)``.

Real networks from local files (nothing is downloaded; construction only checks the file and is
instant; the network is built and its weights read on first use):

* :class:`LaionClapEmbedder` — LAION-CLAP's audio tower (``laion-clap`` 1.1.7's own HTSAT/PANN code and
  preprocessing) from a checkpoint such as ``630k-audioset-best.pt`` (HTSAT-tiny) or
  ``music_audioset_epoch_15_esc_90.14.pt`` (HTSAT-base); 48 kHz; 512-d, L2-normalised. Only the audio
  branch is built — CLAP's text branch (RoBERTa, fetched from the hub by ``CLAP_Module``) is not needed.
  The architecture is read from the checkpoint's tensor shapes.
* :class:`EncodecEmbedder` — the continuous output of EnCodec 24 kHz's encoder (before quantisation),
  128-d at 75 frames/s: averaged over time by ``embed``, frame by frame by ``embed_frames``.
* :class:`AudioLDM2ClapEmbedder` — the CLAP inside a local AudioLDM2 folder (``text_encoder/`` holds a
  transformers ``ClapModel``, ``feature_extractor/`` its ``ClapFeatureExtractor``), through
  ``ClapModel.get_audio_features``.

The **offline default**, used when no weights are given, is *not* CLAP or EnCodec and is never named so:

* :class:`MelStatsEmbedder` (``"mel-stats"``): interpretable statistics of each clip — mean and
  standard deviation over time of the AudioLDM2 log-mel bands, of chroma, onset strength, spectral
  centroid, flatness, RMS and zero-crossing rate, and a tempo estimate (librosa). Its dimensions have
  different units, so ``standardize`` is True. ``feature_names`` names every dimension.
* :class:`VAELatentEmbedder` (``"vae-latent"``): the backbone's own VAE encoder (the space the
  diffusion model works in), averaged over time: 8 channels × 16 frequency bins = 128-d.

Every embedder above but ``embed_frames`` pools over time, so none of them can tell whether a
reconstruction has the *time course* of its clip — when the onsets fall, when which bands are loud —
which is what auditory EEG follows (and all the simulator's EEG encodes). One more, cheap and always
included:

* :class:`MelEnvelopeEmbedder` (``"mel-envelope"``): the AudioLDM2 log-mel spectrogram pooled into
  8 band groups × 100 ms, each band's mean over the clip removed — the band envelopes over time,
  without the clip's overall timbre; 8 × 35 = 280-d.

:func:`make_embedders` picks the set from the paths given; :func:`embed_audio` embeds many clips in
batches with a progress bar.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import librosa
import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from .._compat import hub_offline, import_encodec, import_laion_clap, real_import_error
from ..audio import SAMPLE_RATE, normalize_waveform, waveform_to_mel
from ..utils import resolve_device


@runtime_checkable
class Embedder(Protocol):
    """What the metrics need from an embedder (see the module docstring)."""

    name: str
    sample_rate: int
    dim: int
    standardize: bool

    def embed(self, waves: Any, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """``(B, samples)`` mono clips at ``sample_rate`` → ``(B, dim)`` float32 embeddings."""
        ...


def _as_waves(waves: Any, who: str) -> np.ndarray:
    """``(B, samples)`` float32 C-contiguous NumPy array from an array or tensor; a clear error otherwise."""
    if hasattr(waves, "detach"):
        waves = waves.detach().cpu().numpy()
    array = np.asarray(waves, dtype=np.float32)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{who}: expected waveforms of shape (batch, samples), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{who}: waveforms contain NaN or inf")
    return np.ascontiguousarray(array)


def resample(waves: Any, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample ``(B, samples)`` clips with soxr's high-quality filter (via librosa); float32 out."""
    array = _as_waves(waves, "resample")
    if int(orig_sr) == int(target_sr):
        return array

    out = librosa.resample(array, orig_sr=int(orig_sr), target_sr=int(target_sr), res_type="soxr_hq", axis=-1)
    return np.ascontiguousarray(out, dtype=np.float32)


def embed_audio(
    embedder: Embedder,
    waves: Any,
    sample_rate: int = SAMPLE_RATE,
    *,
    batch_size: int = 8,
    frames: bool = False,
    progress: bool = True,
) -> np.ndarray:
    """Embed many clips in batches, with a progress bar.

    Parameters
    ----------
    embedder : Embedder
        Any object following the protocol.
    waves : array_like or Tensor, shape (n, samples)
        Mono clips at ``sample_rate``.
    sample_rate : int
        Their rate (the project's 16 kHz by default).
    batch_size : int
        Clips per call (memory: CLAP works on 10 s at 48 kHz per clip).
    frames : bool
        Call ``embed_frames`` instead of ``embed`` (``(n, frames, dim)`` out).
    progress : bool
        Show a tqdm bar.
    """

    array = _as_waves(waves, f"embed_audio({embedder.name})")
    method = getattr(embedder, "embed_frames" if frames else "embed", None)
    if method is None:
        raise ValueError(f"embedder {embedder.name!r} has no frame-wise embedding (embed_frames)")
    chunks = []
    for start in tqdm(range(0, len(array), batch_size), desc=f"embed ({embedder.name})", unit="batch", disable=not progress):
        chunks.append(method(array[start : start + batch_size], sample_rate=sample_rate))
    return np.concatenate(chunks)


def _existing_file(path: str | os.PathLike, parameter: str, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{parameter}: {path} is not a file; expected {what}")
    return path.resolve()


class _TorchEmbedder:
    """Shared logic: lazy model, device, no-grad batched forward, resampling on input."""

    name = ""
    sample_rate = SAMPLE_RATE
    dim = 0
    standardize = False

    def __init__(self, device: str = "cpu"):
        self._device_spec = device
        self._model = None

    @property
    def device(self):
        return resolve_device(self._device_spec)

    @property
    def model(self):
        """The network, built and loaded on first use."""
        if self._model is None:
            self._model = self._load().to(self.device).eval()
        return self._model

    def _load(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _prepare(self, waves: Any, sample_rate: int) -> np.ndarray:
        return resample(_as_waves(waves, self.name), sample_rate, self.sample_rate)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, sample_rate={self.sample_rate}, dim={self.dim})"


def _torch_load_weights(path: Path, parameter: str) -> Mapping[str, Any]:

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused (non-tensor objects) or not a torch file at all
        raise ValueError(
            f"{parameter}: cannot read {path} with torch.load(weights_only=True) ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); expected a checkpoint holding only tensors "
            "and plain containers (we never unpickle arbitrary objects)"
        ) from None


def load_clap_audio_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """The audio-branch tensors of a LAION-CLAP checkpoint (``audio_branch.*``, ``audio_projection.*``).

    Accepts LAION's training checkpoints (``{"state_dict": {"module.audio_branch...": ...}, "epoch": ...}``),
    a bare state dict, with or without the ``module.`` prefix of DistributedDataParallel.
    """
    path = _existing_file(path, "clap_checkpoint", "a LAION-CLAP checkpoint such as 630k-audioset-best.pt")
    checkpoint = _torch_load_weights(path, "clap_checkpoint")
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(f"clap_checkpoint: {path} holds no state dict (found {type(checkpoint).__name__})")
    audio = {}
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key.startswith(("audio_branch.", "audio_projection.")):
            audio[key] = value
    if "audio_projection.0.weight" not in audio:
        raise ValueError(
            f"clap_checkpoint: {path} has no LAION-CLAP audio branch (no 'audio_projection.0.weight' among "
            f"{len(state)} tensors, e.g. {list(state)[:3]})"
        )
    return audio


def _clap_architecture(state: Mapping[str, Any]) -> tuple[str, bool]:
    """(LAION-CLAP model-config name, fusion?) that fits the checkpoint's tensor shapes."""

    clap = import_laion_clap()
    embed_dim = int(state["audio_projection.0.weight"].shape[1])
    family = "HTSAT" if any(k.startswith("audio_branch.patch_embed.") for k in state) else "PANN"
    stft = state.get("audio_branch.spectrogram_extractor.stft.conv_real.weight")
    window = int(stft.shape[-1]) if stft is not None else None
    fusion = any(".fusion_model." in k or k.startswith("audio_branch.mel_conv") for k in state)
    candidates = [
        name for name, cfg in clap.factory._MODEL_CONFIGS.items()
        if cfg["audio_cfg"].get("model_type") == family and cfg["embed_dim"] == embed_dim
        and (window is None or cfg["audio_cfg"]["window_size"] == window)
    ]
    if len(candidates) != 1:
        raise ValueError(
            f"clap_checkpoint: cannot tell the audio model from the weights ({family}, embedding {embed_dim}, "
            f"window {window}); candidates {candidates or 'none'} — pass clap_amodel=<one of them>"
        )
    return candidates[0], fusion


def _build_clap_audio_tower(amodel: str, fusion: bool):
    """LAION-CLAP's audio branch and projection, as the two attributes ``CLAP.get_audio_embedding`` uses."""



    clap = import_laion_clap()
    if amodel not in clap.factory._MODEL_CONFIGS:
        raise ValueError(f"clap_amodel: {amodel!r} is not a LAION-CLAP audio model; one of {list(clap.factory._MODEL_CONFIGS)}")
    config = copy.deepcopy(clap.factory._MODEL_CONFIGS[amodel])
    audio_cfg = clap.model.CLAPAudioCfp(**config["audio_cfg"])
    create = clap.htsat.create_htsat_model if audio_cfg.model_type == "HTSAT" else clap.pann_model.create_pann_model

    class ClapAudioTower(nn.Module):
        """``audio_branch`` + ``audio_projection`` of ``laion_clap.clap_module.model.CLAP`` (same names,
        so LAION's checkpoints load into it; the projection mirrors CLAP's: Linear → ReLU → Linear to 512)."""

        def __init__(self):
            super().__init__()
            self.audio_cfg = config["audio_cfg"]
            self.enable_fusion = fusion
            self.audio_branch = create(audio_cfg, fusion, "aff_2d" if fusion else "None")
            joint = 512
            self.audio_projection = nn.Sequential(nn.Linear(config["embed_dim"], joint), nn.ReLU(), nn.Linear(joint, joint))

        def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
            device = self.audio_projection[0].weight.device
            embedding = self.audio_branch(dict(inputs), mixup_lambda=None, device=device)["embedding"]
            return nn.functional.normalize(self.audio_projection(embedding), dim=-1)

    return ClapAudioTower()


class LaionClapEmbedder(_TorchEmbedder):
    """LAION-CLAP audio embeddings (512-d, unit norm) from a local checkpoint, at 48 kHz.

    Parameters
    ----------
    checkpoint : path
        A LAION-CLAP checkpoint file (``630k-audioset-best.pt``, ``music_audioset_epoch_15_esc_90.14.pt``,
        …), read with ``torch.load(weights_only=True)``.
    device : str
        ``"cpu"``, ``"cuda"``, … or ``"auto"``.
    amodel : str
        LAION-CLAP's audio model-config name (``"HTSAT-tiny"``, ``"HTSAT-base"``, …); ``"auto"`` reads it
        from the checkpoint's tensor shapes.

    Notes
    -----
    Preprocessing is the library's: int16 quantisation of the waveform (as ``CLAP_Module.
    get_audio_embedding_from_data``), then ``get_audio_features`` with ``repeatpad`` to 10 s — a
    3.5 s clip is tiled twice and zero-padded (deterministic for clips up to 10 s). Fusion checkpoints
    additionally need a working torchaudio (their mel is computed with it).
    """

    name = "laion-clap"
    sample_rate = 48_000
    dim = 512

    def __init__(self, checkpoint: str | os.PathLike, *, device: str = "cpu", amodel: str = "auto"):
        super().__init__(device)
        self.checkpoint = _existing_file(checkpoint, "clap_checkpoint", "a LAION-CLAP checkpoint such as 630k-audioset-best.pt")
        self.amodel = amodel

    def _load(self):
        state = load_clap_audio_state_dict(self.checkpoint)
        amodel, fusion = _clap_architecture(state) if self.amodel == "auto" else (self.amodel, any(".fusion_model." in k for k in state))
        if fusion:
            if real_import_error("torchaudio") is not None:
                raise RuntimeError(f"clap_checkpoint: {self.checkpoint} is a fusion model, whose preprocessing needs torchaudio, which does not import here")
        tower = _build_clap_audio_tower(amodel, fusion)
        expected = {k: tuple(v.shape) for k, v in tower.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state.items()}
        missing = sorted(expected.keys() - found.keys())
        unexpected = sorted(found.keys() - expected.keys())
        mismatched = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
        if missing or unexpected or mismatched:
            raise ValueError(
                f"clap_checkpoint: {self.checkpoint} does not fit LAION-CLAP {amodel} (fusion={fusion}): "
                f"{len(missing)} missing tensors (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. "
                f"{unexpected[:3]}), {len(mismatched)} of another shape (e.g. {mismatched[:3]})"
            )
        tower.load_state_dict(state)
        self.amodel_resolved = amodel
        return tower

    def embed(self, waves: Any, sample_rate: int = SAMPLE_RATE) -> np.ndarray:


        clap = import_laion_clap()
        array = self._prepare(waves, sample_rate)
        model = self.model
        quantized = (np.clip(array, -1.0, 1.0) * 32767.0).astype(np.int16).astype(np.float32) / 32767.0
        features = [
            clap.data.get_audio_features(
                {}, torch.from_numpy(clip), model.audio_cfg["clip_samples"],
                data_truncating="fusion" if model.enable_fusion else "rand_trunc",
                data_filling="repeatpad", audio_cfg=model.audio_cfg,
            )
            for clip in quantized
        ]
        batch = {key: torch.stack([f[key] for f in features]).to(self.device) for key in features[0]}
        with torch.no_grad():
            return model(batch).float().cpu().numpy()


def load_encodec_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """EnCodec weights from a ``.safetensors`` file, or a torch file (``encodec_24khz-d7cc33bc.th``)
    read with ``torch.load(weights_only=True)``."""
    path = _existing_file(path, "encodec_weights", "EnCodec 24 kHz weights (encodec_24khz-d7cc33bc.th or .safetensors)")
    if path.suffix == ".safetensors":

        return load_file(str(path))
    state = _torch_load_weights(path, "encodec_weights")
    state = state.get("state_dict", state) if isinstance(state, Mapping) else state
    if not isinstance(state, Mapping):
        raise ValueError(f"encodec_weights: {path} holds no state dict (found {type(state).__name__})")
    return dict(state)


class EncodecEmbedder(_TorchEmbedder):
    """EnCodec 24 kHz encoder latents (128-d, 75 frames/s): time-averaged, or frame by frame.

    Parameters
    ----------
    weights : path
        The 24 kHz model's weights (``encodec_24khz-d7cc33bc.th`` as released, or a ``.safetensors``
        copy of its state dict).
    device : str
        Torch device (``"auto"`` allowed).

    Notes
    -----
    The continuous output of ``model.encoder`` (what the quantiser would quantise), as the paper's
    EnCodec metrics use; no quantisation, no normalisation (the 24 kHz model has none).
    """

    name = "encodec"
    sample_rate = 24_000
    dim = 128

    def __init__(self, weights: str | os.PathLike, *, device: str = "cpu"):
        super().__init__(device)
        self.weights = _existing_file(weights, "encodec_weights", "EnCodec 24 kHz weights (encodec_24khz-d7cc33bc.th or .safetensors)")

    def _load(self):
        encodec = import_encodec()
        model = encodec.EncodecModel.encodec_model_24khz(pretrained=False)
        state = load_encodec_state_dict(self.weights)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"encodec_weights: {self.weights} does not fit EnCodec 24 kHz: {str(err)[:400]}") from None
        return model

    def embed_frames(self, waves: Any, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """``(B, samples)`` → ``(B, frames, 128)`` encoder latents (75 frames per second)."""

        array = self._prepare(waves, sample_rate)
        with torch.no_grad():
            latents = self.model.encoder(torch.from_numpy(array)[:, None].to(self.device))  # (B, 128, frames)
        return latents.transpose(1, 2).float().cpu().numpy()

    def embed(self, waves: Any, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        return self.embed_frames(waves, sample_rate).mean(axis=1)


class AudioLDM2ClapEmbedder(_TorchEmbedder):
    """The CLAP audio encoder of a local AudioLDM2 folder (``ClapModel.get_audio_features``), 48 kHz.

    Parameters
    ----------
    folder : path
        An AudioLDM2 pipeline folder (diffusers layout) with ``text_encoder/`` (a transformers
        ``ClapModel``) and ``feature_extractor/`` (its ``ClapFeatureExtractor``).
    device : str
        Torch device.
    """

    name = "audioldm2-clap"
    sample_rate = 48_000
    dim = 512

    def __init__(self, folder: str | os.PathLike, *, device: str = "cpu"):
        super().__init__(device)
        folder = Path(folder).expanduser()
        missing = [sub for sub in ("text_encoder", "feature_extractor") if not (folder / sub).is_dir()]
        if missing:
            raise FileNotFoundError(f"audioldm2_dir: {folder} lacks {missing}; expected an AudioLDM2 folder (diffusers layout)")
        self.folder = folder.resolve()
        self._feature_extractor = None

    def _load(self):
        hub_offline()
        from transformers import ClapFeatureExtractor, ClapModel

        self._feature_extractor = ClapFeatureExtractor.from_pretrained(self.folder / "feature_extractor", local_files_only=True)
        model = ClapModel.from_pretrained(self.folder / "text_encoder", local_files_only=True)
        self.dim = int(model.config.projection_dim)
        self.sample_rate = int(self._feature_extractor.sampling_rate)
        return model

    def embed(self, waves: Any, sample_rate: int = SAMPLE_RATE) -> np.ndarray:

        model = self.model  # loads the feature extractor too
        array = self._prepare(waves, sample_rate)
        # an unfused CLAP (AudioLDM2's) takes one mel, a fused one four: ask for what this model reads,
        # whatever the saved extractor's default
        truncation = "fusion" if model.config.audio_config.enable_fusion else "rand_trunc"
        inputs = self._feature_extractor(list(array), sampling_rate=self.sample_rate, truncation=truncation, return_tensors="pt")
        with torch.no_grad():
            is_longer = inputs.get("is_longer")
            output = model.get_audio_features(input_features=inputs["input_features"].to(self.device),
                                              is_longer=None if is_longer is None else is_longer.to(self.device))
        # transformers ≥ 5 returns a model output whose pooler_output is the normalised embedding
        features = output.pooler_output if hasattr(output, "pooler_output") else output
        return torch.nn.functional.normalize(features, dim=-1).float().cpu().numpy()


class MelStatsEmbedder:
    """Interpretable audio statistics of each clip (librosa), at 16 kHz — an offline stand-in, not CLAP.

    Per clip (after AudioLDM's peak normalisation, so loudness does not count):

    ============================  =====  ==============================================================
    feature                       dims   what
    ============================  =====  ==============================================================
    ``logmel_mean_NN``            64     mean over time of each AudioLDM2 log-mel band (timbre, balance)
    ``logmel_std_NN``             64     its standard deviation over time (dynamics per band)
    ``chroma_mean_X``/``_std_X``  12+12  pitch-class profile (harmony, key)
    ``onset_mean``/``onset_std``  2      onset strength (rhythmic activity)
    ``tempo_bpm``                 1      librosa's tempo estimate (rough on 3.5 s)
    ``centroid_mean``/``_std``    2      spectral centroid, Hz (brightness)
    ``flatness_mean``             1      spectral flatness (noisiness)
    ``rms_mean``/``rms_std``      2      frame energy
    ``zcr_mean``                  1      zero-crossing rate
    ============================  =====  ==============================================================

    The units differ, so ``standardize`` is True: the metrics z-score each dimension with the true
    clips' statistics first.
    """

    name = "mel-stats"
    sample_rate = SAMPLE_RATE
    standardize = True
    _HOP = 160  # 100 frames/s, as the backbone's mel

    def __init__(self):
        self.feature_names = (
            [f"logmel_mean_{i:02d}" for i in range(64)] + [f"logmel_std_{i:02d}" for i in range(64)]
            + [f"chroma_mean_{p}" for p in _PITCH_CLASSES] + [f"chroma_std_{p}" for p in _PITCH_CLASSES]
            + ["onset_mean", "onset_std", "tempo_bpm", "centroid_mean", "centroid_std", "flatness_mean",
               "rms_mean", "rms_std", "zcr_mean"]
        )
        self.dim = len(self.feature_names)

    def embed(self, waves: Any, sample_rate: int = SAMPLE_RATE) -> np.ndarray:


        array = resample(_as_waves(waves, self.name), sample_rate, self.sample_rate)
        wave = normalize_waveform(array).numpy().astype(np.float32)
        logmel = waveform_to_mel(wave, normalize=False, pad_to_multiple=1)[:, 0].numpy()  # (B, frames, 64)
        power = np.abs(librosa.stft(wave, n_fft=2048, hop_length=self._HOP)) ** 2  # (B, 1025, frames)
        # tuning fixed at A440: librosa would otherwise estimate one tuning from the whole batch, making a
        # clip's embedding depend on the clips batched with it
        chroma = librosa.feature.chroma_stft(S=power, sr=self.sample_rate, hop_length=self._HOP, tuning=0.0)
        onset = librosa.onset.onset_strength(y=wave, sr=self.sample_rate, hop_length=self._HOP)
        tempo = librosa.feature.tempo(onset_envelope=onset, sr=self.sample_rate, hop_length=self._HOP).reshape(len(wave), -1)[:, 0]
        magnitude = np.sqrt(power)
        centroid = librosa.feature.spectral_centroid(S=magnitude, sr=self.sample_rate)[:, 0]
        flatness = librosa.feature.spectral_flatness(S=magnitude)[:, 0]
        rms = librosa.feature.rms(S=magnitude, frame_length=2048)[:, 0]
        zcr = librosa.feature.zero_crossing_rate(wave, frame_length=2048, hop_length=self._HOP)[:, 0]
        features = np.concatenate(
            [logmel.mean(axis=1), logmel.std(axis=1), chroma.mean(axis=2), chroma.std(axis=2),
             np.stack([onset.mean(axis=1), onset.std(axis=1), tempo, centroid.mean(axis=1), centroid.std(axis=1),
                       flatness.mean(axis=1), rms.mean(axis=1), rms.std(axis=1), zcr.mean(axis=1)], axis=1)],
            axis=1,
        )
        # a silent clip has no chroma (0/0): its profile is flat zero, not undefined
        return np.nan_to_num(features, nan=0.0).astype(np.float32)

    def __repr__(self) -> str:
        return f"MelStatsEmbedder(name={self.name!r}, dim={self.dim}) — interpretable librosa statistics, not CLAP"


_PITCH_CLASSES = ("C", "Cs", "D", "Ds", "E", "F", "Fs", "G", "Gs", "A", "As", "B")


class MelEnvelopeEmbedder:
    """Band envelopes over time: log-mel pooled into band groups × time bins, each band's clip mean removed.

    At 16 kHz, after AudioLDM's peak normalisation: the AudioLDM2 log-mel spectrogram (64 bands,
    100 frames/s) is averaged over ``band_groups`` groups of adjacent bands and ``bin_seconds`` time
    bins (8 × 100 ms by default; a 3.5 s clip gives 35 bins, a trailing partial bin is dropped), and
    each band group's mean over the clip is subtracted. What remains is *when* each part of the
    spectrum is loud — onsets, beats, instruments entering and leaving — and not the clip's overall
    timbre, key or loudness, which the time-pooled embedders already measure. Dimensions are ordered
    time bin-major (``t00_b0 … t34_b7``); ``standardize`` is True (bands differ in spread).

    Parameters
    ----------
    band_groups : int
        Groups of adjacent mel bands (a divisor of 64).
    bin_seconds : float
        Width of a time bin, seconds (a multiple of the 10 ms mel hop).
    clip_seconds : float
        Clip length the embedding is sized for (3.5 s); longer clips are cut, shorter ones refused.

    Notes
    -----
    Reconstruction and true clip cover the same 3.5 s, so their time bins are aligned by construction;
    this embedding is meaningful only for such paired, aligned clips — the metrics' use.
    """

    name = "mel-envelope"
    sample_rate = SAMPLE_RATE
    standardize = True
    _HOP_SECONDS = 0.01  # the AudioLDM2 mel's hop (160 samples at 16 kHz)

    def __init__(self, band_groups: int = 8, bin_seconds: float = 0.1, clip_seconds: float = 3.5):
        frames_per_bin = bin_seconds / self._HOP_SECONDS
        if not (isinstance(band_groups, int) and band_groups > 0 and 64 % band_groups == 0):
            raise ValueError(f"MelEnvelopeEmbedder: band_groups must divide the 64 mel bands, got {band_groups!r}")
        if not (frames_per_bin >= 1 and abs(frames_per_bin - round(frames_per_bin)) < 1e-9):
            raise ValueError(f"MelEnvelopeEmbedder: bin_seconds must be a positive multiple of 0.01 s, got {bin_seconds!r}")
        self.band_groups, self.frames_per_bin = band_groups, int(round(frames_per_bin))
        self.n_bins = int(round(clip_seconds / self._HOP_SECONDS)) // self.frames_per_bin
        if self.n_bins < 2:
            raise ValueError(f"MelEnvelopeEmbedder: a {clip_seconds} s clip holds fewer than two {bin_seconds} s bins")
        self.dim = self.n_bins * band_groups
        self.feature_names = [f"t{t:02d}_b{b}" for t in range(self.n_bins) for b in range(band_groups)]

    def embed(self, waves: Any, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        array = resample(_as_waves(waves, self.name), sample_rate, self.sample_rate)
        wave = normalize_waveform(array).numpy().astype(np.float32)
        logmel = waveform_to_mel(wave, normalize=False, pad_to_multiple=1)[:, 0].numpy()  # (B, frames, 64)
        frames = self.n_bins * self.frames_per_bin
        if logmel.shape[1] < frames:
            raise ValueError(f"{self.name}: clips of {logmel.shape[1]} mel frames are shorter than the "
                             f"{frames} this embedder is sized for")
        batch = len(logmel)
        envelope = logmel[:, :frames].reshape(batch, self.n_bins, self.frames_per_bin, self.band_groups, -1).mean(axis=(2, 4))
        envelope -= envelope.mean(axis=1, keepdims=True)
        return envelope.reshape(batch, self.dim).astype(np.float32)

    def __repr__(self) -> str:
        return (f"MelEnvelopeEmbedder(name={self.name!r}, dim={self.dim}) — log-mel band envelopes over time "
                f"({self.band_groups} bands × {self.n_bins} bins), not a network")


class VAELatentEmbedder:
    """The backbone's VAE latents averaged over time: 8 channels × 16 bins = 128-d, at 16 kHz.

    Parameters
    ----------
    backbone : eeg2music.models.backbone.Backbone
        Anything with ``wave_to_mel(wave (B, S) tensor) -> mel (B, 1, frames, 64)`` and
        ``encode(mel) -> latents (B, 8, time, 16)``; its VAE's device and dtype are used.

    Notes
    -----
    This is the representation the diffusion model generates in, so it measures how close the
    generated latents' *decoded-and-re-encoded* audio is to the true clip's in the backbone's own
    terms — informative, and honest about what it is: not a perceptual embedding.
    """

    name = "vae-latent"
    sample_rate = SAMPLE_RATE
    standardize = False

    def __init__(self, backbone: Any):
        for attribute in ("wave_to_mel", "encode"):
            if not callable(getattr(backbone, attribute, None)):
                raise TypeError(f"backbone: needs a callable {attribute}() (an eeg2music.models.backbone.Backbone); got {type(backbone).__name__}")
        self.backbone = backbone
        latent_shape = getattr(backbone, "latent_shape", (8, 88, 16))
        self.dim = int(latent_shape[0] * latent_shape[2])

    def _device_dtype(self):

        vae = getattr(self.backbone, "vae", None)
        if isinstance(vae, torch.nn.Module):
            parameter = next(vae.parameters())
            return parameter.device, parameter.dtype
        return torch.device("cpu"), torch.float32

    def embed_frames(self, waves: Any, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """``(B, samples)`` → ``(B, latent frames, 128)``: each latent frame's 8 × 16 values."""

        array = resample(_as_waves(waves, self.name), sample_rate, self.sample_rate)
        device, dtype = self._device_dtype()
        with torch.no_grad():
            mel = self.backbone.wave_to_mel(torch.from_numpy(array).to(device))
            latents = self.backbone.encode(mel.to(device=device, dtype=dtype))  # (B, C, time, freq)
        batch, channels, time, bins = latents.shape
        return latents.permute(0, 2, 1, 3).reshape(batch, time, channels * bins).float().cpu().numpy()

    def embed(self, waves: Any, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        return self.embed_frames(waves, sample_rate).mean(axis=1)

    def __repr__(self) -> str:
        return f"VAELatentEmbedder(name={self.name!r}, dim={self.dim}) — the backbone's VAE, not CLAP/EnCodec"


def make_embedders(
    clap_checkpoint: str | os.PathLike = "",
    encodec_weights: str | os.PathLike = "",
    audioldm2_dir: str | os.PathLike = "",
    backbone: Any = None,
    *,
    device: str = "cpu",
    clap_amodel: str = "auto",
) -> list[Any]:
    """The embedders to evaluate with: the real ones whose weights are given, else the offline set.

    Parameters
    ----------
    clap_checkpoint : path or ""
        LAION-CLAP checkpoint file → :class:`LaionClapEmbedder`.
    encodec_weights : path or ""
        EnCodec 24 kHz weights → :class:`EncodecEmbedder`.
    audioldm2_dir : path or ""
        A local AudioLDM2 folder → :class:`AudioLDM2ClapEmbedder` (its CLAP).
    backbone : Backbone or None
        Adds :class:`VAELatentEmbedder` to the offline set.
    device : str
        Torch device of the network embedders.
    clap_amodel : str
        Passed to :class:`LaionClapEmbedder` as ``amodel``.

    Returns
    -------
    list
        Real embedders for every path given (checked to exist now, loaded on first use); when none is
        given, the offline set: ``[MelStatsEmbedder()]`` plus ``VAELatentEmbedder(backbone)`` if a
        backbone is given. :class:`MelEnvelopeEmbedder` comes second in every set: the only
        time-resolved one, and no stand-in for anything.
    """
    embedders: list[Any] = []
    if str(clap_checkpoint):
        embedders.append(LaionClapEmbedder(clap_checkpoint, device=device, amodel=clap_amodel))
    if str(encodec_weights):
        embedders.append(EncodecEmbedder(encodec_weights, device=device))
    if str(audioldm2_dir):
        embedders.append(AudioLDM2ClapEmbedder(audioldm2_dir, device=device))
    offline = not embedders
    if offline:
        embedders.append(MelStatsEmbedder())
    embedders.insert(1, MelEnvelopeEmbedder())
    if offline and backbone is not None:
        embedders.append(VAELatentEmbedder(backbone))
    return embedders
