"""The subject layer S: one learned C × C channel mixing per participant, applied before P
(Défossez et al. 2023), with a rule for participants it has not seen.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import nn

#: The subject index that selects the "unknown subject" path (leave-one-subject-out evaluation).
UNKNOWN_SUBJECT = -1


#: Ways to treat a subject the subject layer has not seen (see :class:`SubjectLayer`).
UNKNOWN_SUBJECT_MODES = ("mean", "shared")


def subject_tensor(subject: Any, batch: int, device: torch.device, where: str) -> torch.Tensor:
    """``subject`` as a ``(batch,)`` int64 tensor (an int or a 0-d tensor is broadcast)."""
    if subject is None:
        raise ValueError(
            f"{where}: subject is required (the model was built with subject_cond=True); pass one subject "
            f"index per window, or {UNKNOWN_SUBJECT} (UNKNOWN_SUBJECT) for a subject not seen in training"
        )
    if isinstance(subject, numbers.Integral) and not isinstance(subject, bool):
        subject = torch.tensor(int(subject))
    elif not isinstance(subject, torch.Tensor):
        try:
            subject = torch.as_tensor(subject)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{where}: subject must be integer indices, got {subject!r}") from None
    if subject.is_floating_point() or subject.is_complex() or subject.dtype == torch.bool:
        raise TypeError(f"{where}: subject must hold integer indices, got dtype {subject.dtype}")
    tensor = subject.to(device=device, dtype=torch.long)
    if tensor.ndim == 0:
        tensor = tensor.expand(batch)
    if tensor.shape != (batch,):
        raise ValueError(
            f"{where}: subject must have shape ({batch},) (one index per window of the batch); "
            f"received shape {tuple(tensor.shape)}"
        )
    return tensor


class SubjectLayer(nn.Module):
    """S: a per-subject C × C channel-mixing matrix applied to the EEG, initialised to the identity.

    In the style of Défossez et al. (2023, "Decoding speech perception from non-invasive brain
    recordings"): each subject gets its own spatial re-mixing of the electrodes, absorbing differences
    in head shape, cap placement and source orientation, so the shared network after it sees a common
    "virtual montage". Starting at the identity means the layer is a no-op until training moves it.

    Subject :data:`UNKNOWN_SUBJECT` (−1) is a subject not seen in training (leave-one-subject-out).
    It is allowed only with ``allow_unknown=True`` and uses either

    * ``unknown="mean"``: the average of the subjects' matrices (no extra parameters; the natural
      estimate of an unseen subject's mixing under a random-effects view), or
    * ``unknown="shared"``: a separate learned matrix, which training must fit by feeding some windows
      as :data:`UNKNOWN_SUBJECT` (subject dropout); otherwise it stays the identity.

    Parameters
    ----------
    n_subjects : int
        Number of training subjects; valid indices are ``0 … n_subjects - 1``.
    channels : int
        EEG channels C.
    allow_unknown : bool
        Whether :data:`UNKNOWN_SUBJECT` is accepted.
    unknown : {"mean", "shared"}
        The unknown-subject path (used only when ``allow_unknown``).
    """

    def __init__(self, n_subjects: int, channels: int, allow_unknown: bool = False, unknown: str = "mean"):
        super().__init__()
        if n_subjects < 1:
            raise ValueError(f"SubjectLayer: n_subjects must be ≥ 1, got {n_subjects}")
        if unknown not in UNKNOWN_SUBJECT_MODES:
            raise ValueError(f"SubjectLayer: unknown={unknown!r}; expected one of {UNKNOWN_SUBJECT_MODES}")
        self.n_subjects = int(n_subjects)
        self.channels = int(channels)
        self.allow_unknown = bool(allow_unknown)
        self.unknown = unknown
        self.weight = nn.Parameter(torch.eye(channels).repeat(n_subjects, 1, 1))
        if allow_unknown and unknown == "shared":
            self.shared_weight = nn.Parameter(torch.eye(channels))
        else:
            self.register_parameter("shared_weight", None)

    def extra_repr(self) -> str:
        path = self.unknown if self.allow_unknown else "none"
        return f"n_subjects={self.n_subjects}, channels={self.channels}, unknown_subject={path}"

    def unknown_matrix(self) -> torch.Tensor:
        """The C × C matrix used for :data:`UNKNOWN_SUBJECT`."""
        if not self.allow_unknown:
            raise ValueError("SubjectLayer: this layer has no unknown-subject path (allow_unknown=False)")
        return self.shared_weight if self.shared_weight is not None else self.weight.mean(dim=0)

    def check_subjects(self, subject: torch.Tensor) -> None:
        """Raise a clear error for an index outside ``0 … n_subjects - 1`` (or an unexpected −1)."""
        if subject.device.type == "meta":
            return  # shapes only: there are no values to check
        low = UNKNOWN_SUBJECT if self.allow_unknown else 0
        bad = (subject < low) | (subject >= self.n_subjects)
        if bool(bad.any()):
            values = sorted(set(subject[bad].tolist()))
            if values == [UNKNOWN_SUBJECT]:
                raise ValueError(
                    f"SubjectLayer: subject {UNKNOWN_SUBJECT} (unknown subject) given, but this model has no "
                    f"unknown-subject path; build it with allow_unknown_subject=True for leave-one-subject-out"
                )
            valid = f"0 … {self.n_subjects - 1}" + (f" or {UNKNOWN_SUBJECT} (unknown)" if self.allow_unknown else "")
            raise ValueError(
                f"SubjectLayer: subject index {values} out of range; expected {valid} "
                f"(the model was built for n_subjects={self.n_subjects})"
            )

    def forward(self, eeg: torch.Tensor, subject: Any) -> torch.Tensor:
        """Mix the channels of ``eeg (B, C, T)`` with each window's subject matrix."""
        if eeg.ndim != 3 or eeg.shape[1] != self.channels:
            raise ValueError(
                f"SubjectLayer: eeg must have shape (batch, {self.channels} channels, samples); "
                f"received shape {tuple(eeg.shape)}"
            )
        subject = subject_tensor(subject, eeg.shape[0], eeg.device, "SubjectLayer")
        self.check_subjects(subject)
        # A one-hot product rather than ``self.weight[subject]``: the same matrices, bit for bit, but its backward
        # is a matrix product, while indexing's backward accumulates into the weight in parallel on CPU, in an
        # order that changes from run to run once a batch repeats subjects (64 windows of 20 listeners).
        one_hot = torch.nn.functional.one_hot(subject.clamp(min=0), self.weight.shape[0]).to(self.weight.dtype)
        matrices = (one_hot @ self.weight.flatten(1)).view(-1, *self.weight.shape[1:])
        if self.allow_unknown:
            is_unknown = (subject == UNKNOWN_SUBJECT)[:, None, None]
            matrices = torch.where(is_unknown, self.unknown_matrix().expand_as(matrices), matrices)
        return torch.bmm(matrices.to(eeg.dtype), eeg)
