"""The cross-domain autoencoder of AE-CFE (paper Sec. 2.2, Fig. 1): model only.

An encoder of convolutions (ReLU, then GroupNorm) squeezes a cell's R-CNN
instance features ``(C, 14, 14)`` into a 50-d latent vector in ``[-1, 1]``
(tanh). A feature decoder maps the latent back to ``(C, 14, 14)``, and an image
decoder turns the *decoded* features into an RGB reconstruction of the masked
cell crop (sigmoid, ``image_size`` x ``image_size``). The latent is the feature
vector the random forest later classifies.

The paper preset (:meth:`AEConfig.paper`, also the default) repeats the layer
sizes of the authors' released ``model.py`` (github.com/marrlab/AE-CFE), with
two deliberate differences, both needed for a valid standard layer:

* ``torch.nn.GroupNorm`` needs the group count to divide the channel count. The
  released code used its own GroupNorm that reshapes ``C*H*W`` into 32 groups
  regardless of channel boundaries (200 channels, 32 groups) and normalises with
  the unbiased variance. We use 25 groups of 8 channels for that layer, and the
  released counts (30, 10, 10, 20) elsewhere; PyTorch's biased variance.
* Sizes are checked: every layer list must map ``roi_size`` to a 1x1 latent and
  back, and the image decoder must end exactly at ``image_size``. A config that
  does not is rejected when it is built, with the sizes it would produce.

Checkpoints store ``{"config": asdict(cfg), "state_dict": ...}`` and are
rebuilt from that stored config (:func:`load_checkpoint`); never a pickled model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from bcfeat.model_files import build_from_payload
from bcfeat.training.checkpoint import RESERVED_KEYS, config_from_dict, read_model_file, save_model_file



@dataclass
class AEConfig:
    """Sizes of the cross-domain autoencoder; the defaults are the paper preset.

    Layer lists are given per layer; ``kernels`` and ``strides`` use no padding,
    so a convolution maps ``H -> (H - k) // s + 1`` and a transposed convolution
    ``H -> (H - 1) * s + k``.

    Attributes
    ----------
    in_channels : int
        Channels ``C`` of the instance features (256 = FPN width of the R-CNN).
    roi_size : int
        Spatial side of the RoIAlign output (14, as in Mask R-CNN's mask head).
    latent_dim : int
        Size of the feature vector (50 in the paper).
    encoder_widths, encoder_kernels, encoder_strides, encoder_groups : tuple of int
        One entry per hidden encoder convolution (Conv -> ReLU -> GroupNorm).
        ``encoder_groups[i]`` must divide ``encoder_widths[i]``. A final 1x1
        convolution to ``latent_dim`` and a tanh follow; the spatial size must be
        1x1 by then.
    feature_decoder_widths : tuple of int
        Hidden widths of the feature decoder (ConvTranspose -> ReLU); a last
        transposed convolution maps to ``in_channels``.
    feature_decoder_kernels, feature_decoder_strides : tuple of int
        One more entry than ``feature_decoder_widths`` (the last layer).
    feature_output : {"tanh", "identity"}
        Activation of the decoded features. ``"tanh"`` (released code) expects
        the instance features scaled into ``[-1, 1]``; the released loader
        min-max scaled each sample's features to that range.
    image_size : int
        Side ``S`` of the reconstructed crop (128 in the paper).
    image_decoder_widths, image_decoder_kernels, image_decoder_strides : tuple of int
        One entry per hidden image-decoder layer (ConvTranspose -> ReLU); a 1x1
        layer to 3 channels and a sigmoid follow.
    """

    in_channels: int = 256
    roi_size: int = 14
    latent_dim: int = 50
    # Released encoder: 256 -> 200 -> 150 -> 100 -> 70 -> 60 -> 50 at 14 -> 12 -> 5 -> 3 -> 2 -> 1 -> 1.
    encoder_widths: tuple[int, ...] = (200, 150, 100, 70, 60)
    encoder_kernels: tuple[int, ...] = (3, 3, 3, 2, 2)
    encoder_strides: tuple[int, ...] = (1, 2, 1, 1, 1)
    # Released: 32 (not a divisor of 200, see module docstring), 30, 10, 10, 20.
    encoder_groups: tuple[int, ...] = (25, 30, 10, 10, 20)
    # Released feature decoder: 50 -> 150 -> 200 -> 256 at 1 -> 5 -> 12 -> 14.
    feature_decoder_widths: tuple[int, ...] = (150, 200)
    feature_decoder_kernels: tuple[int, ...] = (5, 4, 3)
    feature_decoder_strides: tuple[int, ...] = (1, 2, 1)
    feature_output: str = "tanh"
    image_size: int = 128
    # Released image decoder: 256 -> 200 -> 180 -> 150 -> 128 -> 3 at 14 -> 31 -> 63 -> 127 -> 128.
    image_decoder_widths: tuple[int, ...] = (200, 180, 150, 128)
    image_decoder_kernels: tuple[int, ...] = (5, 3, 3, 2)
    image_decoder_strides: tuple[int, ...] = (2, 2, 2, 1)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):  # configs read back from JSON/YAML carry lists
                setattr(self, f.name, tuple(value))
        self._check()

    # -- presets --------------------------------------------------------------
    @classmethod
    def paper(cls, **overrides: Any) -> AEConfig:
        """The released AE-CFE sizes: 256x14x14 -> 50 -> 256x14x14 -> 3x128x128."""
        return cls(**overrides)

    @classmethod
    def cpu(cls, **overrides: Any) -> AEConfig:
        """A CPU-sized model: 64x14x14 features -> 50 -> 64x14x14 -> 3x64x64.

        Same depth, kernels and latent as the paper; far fewer multiply-adds,
        mostly saved in the image decoder (64 px output, narrow layers).
        """
        base = dict(
            in_channels=64,
            encoder_widths=(96, 96, 64, 64, 64),
            encoder_groups=(16, 16, 16, 16, 16),
            feature_decoder_widths=(96, 96),
            image_size=64,
            # 14 -> 30 -> 62 -> 64; narrow because the last two layers run at 62-64 px and
            # dominate the step time (64/32/32 wide was 2.4x slower per step on 1 CPU thread).
            image_decoder_widths=(32, 16, 16),
            image_decoder_kernels=(4, 4, 3),
            image_decoder_strides=(2, 2, 1),
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def tiny(cls, **overrides: Any) -> AEConfig:
        """A toy model for tests and smoke runs: 16x14x14 -> 50 -> 16x14x14 -> 3x32x32."""
        base = dict(
            in_channels=16,
            encoder_widths=(16, 16, 16, 16, 16),
            encoder_groups=(4, 4, 4, 4, 4),
            feature_decoder_widths=(32, 32),
            image_size=32,
            # 14 -> 30 -> 32
            image_decoder_widths=(8, 8),
            image_decoder_kernels=(4, 3),
            image_decoder_strides=(2, 1),
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AEConfig:
        """Rebuild from ``asdict(cfg)``; unknown keys are an error naming them."""
        return config_from_dict(cls, d)

    # -- size bookkeeping -------------------------------------------------------
    def encoder_sizes(self) -> list[int]:
        """Spatial side after each encoder convolution, input first."""
        sizes = [self.roi_size]
        for k, s in zip(self.encoder_kernels, self.encoder_strides):
            sizes.append((sizes[-1] - k) // s + 1)
        return sizes

    def feature_decoder_sizes(self) -> list[int]:
        """Spatial side after each feature-decoder layer, latent (1) first."""
        sizes = [1]
        for k, s in zip(self.feature_decoder_kernels, self.feature_decoder_strides):
            sizes.append((sizes[-1] - 1) * s + k)
        return sizes

    def image_decoder_sizes(self) -> list[int]:
        """Spatial side after each image-decoder layer, ``roi_size`` first."""
        sizes = [self.roi_size]
        for k, s in zip(self.image_decoder_kernels, self.image_decoder_strides):
            sizes.append((sizes[-1] - 1) * s + k)
        return sizes

    def _check(self) -> None:
        def same_len(names: tuple[str, ...], extra: int = 0) -> None:
            ref = len(getattr(self, names[0])) + extra
            for n in names[1:]:
                if len(getattr(self, n)) != ref:
                    raise ValueError(
                        f"AEConfig.{n} has {len(getattr(self, n))} entries, expected {ref} "
                        f"(one per layer of {names[0]}{' plus the output layer' if extra else ''})"
                    )

        same_len(("encoder_widths", "encoder_kernels", "encoder_strides", "encoder_groups"))
        same_len(("feature_decoder_widths",))
        if len(self.feature_decoder_kernels) != len(self.feature_decoder_widths) + 1 or len(
            self.feature_decoder_strides
        ) != len(self.feature_decoder_widths) + 1:
            raise ValueError(
                "AEConfig.feature_decoder_kernels/strides need one entry more than "
                f"feature_decoder_widths ({len(self.feature_decoder_widths)}), for the output layer"
            )
        same_len(("image_decoder_widths", "image_decoder_kernels", "image_decoder_strides"))
        for w, g in zip(self.encoder_widths, self.encoder_groups):
            if g < 1 or w % g:
                raise ValueError(f"AEConfig.encoder_groups: {g} groups do not divide {w} channels")
        if self.feature_output not in ("tanh", "identity"):
            raise ValueError(f"AEConfig.feature_output must be 'tanh' or 'identity', got {self.feature_output!r}")
        enc = self.encoder_sizes()
        if min(enc) < 1 or enc[-1] != 1:
            raise ValueError(
                f"AEConfig encoder maps roi_size={self.roi_size} through sides {enc}; it must end at 1x1"
            )
        dec = self.feature_decoder_sizes()
        if dec[-1] != self.roi_size:
            raise ValueError(
                f"AEConfig feature decoder maps 1x1 through sides {dec}; it must end at roi_size={self.roi_size}"
            )
        img = self.image_decoder_sizes()
        if img[-1] != self.image_size:
            raise ValueError(
                f"AEConfig image decoder maps {self.roi_size} through sides {img}; "
                f"it must end at image_size={self.image_size}"
            )


class AEOutput(NamedTuple):
    """What :class:`CrossDomainAutoencoder` returns.

    Attributes
    ----------
    latent : Tensor, shape (n, latent_dim)
        Feature vector in ``[-1, 1]``.
    features : Tensor, shape (n, in_channels, roi_size, roi_size)
        Reconstructed instance features.
    image : Tensor, shape (n, 3, image_size, image_size)
        Reconstructed crop in ``[0, 1]``, decoded from ``features``.
    """

    latent: Tensor
    features: Tensor
    image: Tensor


class CrossDomainAutoencoder(nn.Module):
    """Encoder, feature decoder and image decoder of AE-CFE.

    Parameters
    ----------
    cfg : AEConfig
        Layer sizes; see :class:`AEConfig`.

    Examples
    --------
    >>> cfg = AEConfig.cpu()
    >>> out = CrossDomainAutoencoder(cfg)(torch.zeros(2, 64, 14, 14))
    >>> tuple(out.latent.shape), tuple(out.features.shape), tuple(out.image.shape)
    ((2, 50), (2, 64, 14, 14), (2, 3, 64, 64))
    """

    def __init__(self, cfg: AEConfig) -> None:
        super().__init__()
        self.cfg = cfg

        layers: list[nn.Module] = []
        c = cfg.in_channels
        for w, k, s, g in zip(cfg.encoder_widths, cfg.encoder_kernels, cfg.encoder_strides, cfg.encoder_groups):
            # ReLU before GroupNorm, as in the released encoder.
            layers += [nn.Conv2d(c, w, kernel_size=k, stride=s), nn.ReLU(), nn.GroupNorm(g, w)]
            c = w
        layers += [nn.Conv2d(c, cfg.latent_dim, kernel_size=1), nn.Tanh()]
        self.encoder = nn.Sequential(*layers)

        layers = []
        c = cfg.latent_dim
        widths = (*cfg.feature_decoder_widths, cfg.in_channels)
        for i, (w, k, s) in enumerate(zip(widths, cfg.feature_decoder_kernels, cfg.feature_decoder_strides)):
            layers.append(nn.ConvTranspose2d(c, w, kernel_size=k, stride=s))
            if i < len(widths) - 1:
                layers.append(nn.ReLU())
            c = w
        layers.append(nn.Tanh() if cfg.feature_output == "tanh" else nn.Identity())
        self.feature_decoder = nn.Sequential(*layers)

        layers = []
        c = cfg.in_channels
        for w, k, s in zip(cfg.image_decoder_widths, cfg.image_decoder_kernels, cfg.image_decoder_strides):
            layers += [nn.ConvTranspose2d(c, w, kernel_size=k, stride=s), nn.ReLU()]
            c = w
        layers += [nn.ConvTranspose2d(c, 3, kernel_size=1), nn.Sigmoid()]
        self.image_decoder = nn.Sequential(*layers)

    def _check_input(self, x: Tensor) -> None:
        expected = (self.cfg.in_channels, self.cfg.roi_size, self.cfg.roi_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            want = ", ".join(map(str, expected))
            raise ValueError(f"instance features must have shape (n, {want}); got {tuple(x.shape)}")

    def encode(self, x: Tensor) -> Tensor:
        """Latent feature vectors.

        Parameters
        ----------
        x : Tensor, shape (n, in_channels, roi_size, roi_size)

        Returns
        -------
        Tensor, shape (n, latent_dim), values in ``[-1, 1]``
        """
        self._check_input(x)
        return self.encoder(x).flatten(1)

    def decode_features(self, z: Tensor) -> Tensor:
        """``(n, latent_dim)`` -> ``(n, in_channels, roi_size, roi_size)``."""
        return self.feature_decoder(z[:, :, None, None])

    def decode_image(self, features: Tensor) -> Tensor:
        """``(n, in_channels, roi_size, roi_size)`` -> ``(n, 3, image_size, image_size)`` in ``[0, 1]``."""
        return self.image_decoder(features)

    def forward(self, x: Tensor) -> AEOutput:
        """Encode, decode the features, and decode the image from the decoded features.

        Parameters
        ----------
        x : Tensor, shape (n, in_channels, roi_size, roi_size)

        Returns
        -------
        AEOutput
            ``latent (n, latent_dim)``, ``features (n, C, roi, roi)``, ``image (n, 3, S, S)``.
        """
        z = self.encode(x)
        f = self.decode_features(z)
        return AEOutput(z, f, self.decode_image(f))


def save_checkpoint(path: str | os.PathLike, model: CrossDomainAutoencoder, cfg: AEConfig,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``{"format", "config": asdict(cfg), "state_dict", **extra}`` atomically.

    The file is written to a temporary file beside ``path`` and moved over it
    with ``os.replace``, so a crash mid-write leaves the previous checkpoint.

    Parameters
    ----------
    path : path-like
        Destination; parent folders are created.
    model : CrossDomainAutoencoder
    cfg : AEConfig
        The config the model was built from (stored, used by :func:`load_checkpoint`).
    extra : dict, optional
        More top-level entries (optimizer state, epoch, history, ...). Values must
        be loadable with ``torch.load(weights_only=True)``: tensors, numbers,
        strings, None, and lists/tuples/dicts of those.

    Returns
    -------
    Path
        ``path``.
    """
    return save_model_file(path, "autoencoder", cfg, model.state_dict(), extra)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> tuple[CrossDomainAutoencoder, AEConfig, dict[str, Any]]:
    """Rebuild the autoencoder from a checkpoint's stored config and weights.

    Parameters
    ----------
    path : path-like
    map_location : str or torch.device
        Where tensors are loaded (the model is moved there too).

    Returns
    -------
    model : CrossDomainAutoencoder
        In eval mode.
    cfg : AEConfig
    extra : dict
        Every other top-level entry that :func:`save_checkpoint` stored.
    """
    model, cfg, extra = autoencoder_from_payload(read_model_file(path, "autoencoder", map_location=map_location),
                                                 path)
    return model.to(map_location).eval(), cfg, extra


def autoencoder_from_payload(payload: dict[str, Any], source: str | os.PathLike = "<payload>"
                             ) -> tuple[CrossDomainAutoencoder, AEConfig, dict[str, Any]]:
    """Rebuild the autoencoder from a checkpoint payload; ``source`` names it in errors."""
    def build() -> tuple[CrossDomainAutoencoder, AEConfig]:
        cfg = AEConfig.from_dict(payload["config"])
        model = CrossDomainAutoencoder(cfg)
        model.load_state_dict(payload["state_dict"])
        return model, cfg

    model, cfg = build_from_payload(source, "autoencoder configuration or weights", build)
    extra = {k: v for k, v in payload.items() if k not in RESERVED_KEYS}
    return model.eval(), cfg, extra
