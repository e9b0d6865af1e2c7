"""One door to every bcfeat model file that turns cell images into features.

bcfeat writes two kinds of file a user extracts features with: the reproduction's one-file
AE-CFE extractor (``bcfeat.aecfe/1``: detector + autoencoder, 50 latent features) and the
project's cross-lab model (``bcfeat.crosslab/1``: a mask source, the canonical crop and about
160 named cell features, with or without a classifier). :func:`open_extractor` reads a file
**once** (its bytes give both the checksum and the payload, so a file replaced in between cannot
give one file's checksum with another's weights), decides its kind from its ``format`` entry and
returns an :class:`Extractor` with one interface for both kinds: ``kind``, ``feature_names``,
``transform(images)`` and ``extract_folder(folder)``. The command line (``bcfeat extract``),
the shards of ``--shard K/N`` and the scikit-learn transformer
(:class:`bcfeat.extraction.transformer.ImageFeatures`) all open model files here.

>>> open_extractor("no/such/model.pt")
Traceback (most recent call last):
...
FileNotFoundError: no model file at no/such/model.pt
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bcfeat.model_files import ModelFileError, arrays_as_tensors, parse_format, read_payload_arrays

# The kinds of file open_extractor opens, by their format's kind.
EXTRACTOR_KINDS: tuple[str, ...] = ("aecfe", "crosslab")


@dataclass
class Extractor:
    """A model file opened for extraction.

    Attributes
    ----------
    kind : str
        ``"aecfe"`` (the reproduction's extractor) or ``"crosslab"`` (the project's model).
    path : Path
        The file it was read from.
    sha256 : str
        Checksum of the bytes the model was built from.
    model : AECFEModel or CrossLabModel
        The rebuilt model (:class:`bcfeat.autoencoder.aecfe_model.AECFEModel` or
        :class:`bcfeat.crosslab.model.CrossLabModel`).
    """

    kind: str
    path: Path
    sha256: str
    model: Any

    @property
    def feature_names(self) -> list[str]:
        """The names of the feature columns, in order."""
        if self.kind == "crosslab":
            return list(self.model.feature_names)
        return [f"aecfe{i}" for i in range(int(self.model.autoencoder.cfg.latent_dim))]

    def transform(self, images: Sequence[Any], runtime: Any = None) -> np.ndarray:
        """Decoded images (``(H, W, 3)`` uint8) or image paths -> ``(n, len(feature_names))`` float32.

        ``runtime`` (an :class:`bcfeat.detection.batched_inference.ExtractionRuntime`) places an AE-CFE
        model's batched path; a cross-lab model measures on the CPU and takes none.

        Raises
        ------
        ValueError
            An image could not be measured (cross-lab: too small, or no cell found by the mask is
            not an error; an undecodable input is), naming how many.
        """
        if self.kind == "crosslab":
            if runtime is not None:
                raise ValueError("a cross-lab model measures on the CPU; runtime applies to AE-CFE model files")
            feats, kept = self.model.measure(list(images))
            if len(kept) != len(images):
                raise ValueError(f"{len(images) - len(kept)} of {len(images)} image(s) could not be measured")
            return feats.astype(np.float32)
        return self.model.transform(list(images), runtime).astype(np.float32)

    def check_layout(self, layout: str) -> None:
        """Refuse a dataset layout for a cross-lab model, which reads every image below a folder."""
        if self.kind == "crosslab" and layout != "files":
            raise ValueError("--layout applies to AE-CFE model files; a cross-lab model reads every image below the folder")

    def extract_folder(self, folder: str | os.PathLike, layout: str = "files", batch_size: int = 64,
                       progress: bool = True, device: str | None = None):
        """The features of every image below ``folder``: ``(table, skipped)``, one row per image.

        The table has ``relpath`` (and, for AE-CFE, ``label, fallback, score``) then one column
        per feature; ``skipped`` names every other file with the reason. ``layout``, ``batch_size``
        and ``device`` apply to AE-CFE files (:func:`bcfeat.extraction.folder.extract_with`); a
        cross-lab model reads every image below the folder on the CPU.
        """
        self.check_layout(layout)
        if self.kind == "crosslab":
            if device not in (None, "cpu"):
                raise ValueError(f"--device {device}: a cross-lab model measures on the CPU")
            from bcfeat.crosslab.folders import measure_folder_table

            return measure_folder_table(self.model, folder)
        from bcfeat.extraction.folder import extract_with

        return extract_with(self.model, folder, layout=layout, batch_size=batch_size, progress=progress,
                            device=device)


def read_model_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a model file, with the errors of :func:`bcfeat.model_files.read_payload`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no model file at {path}")
    if path.is_dir():
        raise ModelFileError(path, "is a folder, not a file")
    return path.read_bytes()


def open_extractor(path: str | os.PathLike) -> Extractor:
    """Open any bcfeat model file that extracts features; the file is read once (a cross-lab file
    without PyTorch unless it holds a detector: :func:`bcfeat.model_files.read_payload_arrays`).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    bcfeat.model_files.ModelFileError
        Damaged, holding code, of another version, or a bcfeat file of a kind that does not
        extract features (a detector or autoencoder checkpoint, an oracle); one line naming it.
    """
    path = Path(path)
    data = read_model_bytes(path)
    payload = read_payload_arrays(path, data=data)
    found = parse_format(payload.get("format")) if isinstance(payload, dict) else None
    kind = found[0] if found else None
    if kind not in (None, "crosslab"):  # the other kinds build torch modules from tensors
        payload = arrays_as_tensors(payload)
    if kind == "crosslab":
        from bcfeat.crosslab.model import load_model as load_crosslab

        model = load_crosslab(path, payload)
    elif kind == "aecfe":
        from bcfeat.autoencoder.aecfe_model import load_model as load_aecfe

        model = load_aecfe(path, payload)
    else:
        what = f"a bcfeat {kind} file" if kind else "not a bcfeat model file (no bcfeat format entry)"
        raise ModelFileError(path, f"is {what}; features are extracted with a model file of kind "
                                   f"{' or '.join(EXTRACTOR_KINDS)}: an AE-CFE model file "
                                   "(artifacts/<profile>/aecfe_model.pt) or a cross-lab model file "
                                   "(artifacts/<profile>/crosslab_model.pt)")
    return Extractor(kind, path, hashlib.sha256(data).hexdigest(), model)


__all__ = ["EXTRACTOR_KINDS", "Extractor", "open_extractor", "read_model_bytes"]
