"""One dataclass describes a model: builders take it, bundles and checkpoints record it, the CLI prints it."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class WaveletConfig:
    """The `default` hybrid model: a wavelet codec at initialization, refined by training."""

    wavelet: str = "cdf97"          # "cdf97" lossy, "legall53" reversible (lossless mode)
    levels: int = 7                 # upper bound; small images use fewer (see codec.levels_for)
    mode: str = "symmetric"         # boundary extension of the lifting DWT
    num_scales: int = 64            # entropy-model tables, indexed by the context model
    scale_min: float = 0.05         # Laplace scale of table 0, in quantizer steps
    scale_max: float = 512.0        # Laplace scale of the last table
    deadzone: float = 0.2           # rounding offset 0.5 - deadzone toward zero
    recon_bias: float = 0.18        # decoder reconstruction point inside a nonzero bin (fitted on train images)
    refine_channels: int = 0        # learned residual transform on subbands (0 = off)
    postfilter_channels: int = 12   # learned residual post-filter width (0 = off)
    postfilter_layers: int = 3


@dataclass(frozen=True)
class PaperConfig:
    """The seed paper's CNN + DCT + fully connected autoencoder on fixed-size tiles."""

    tile: int = 64
    filters: tuple = (32, 64)
    dct_block: int = 8
    latent_dim: int = 256
    dense_units: int = 1024


@dataclass(frozen=True)
class TrainConfig:
    lmbda: float = 0.01             # weight of the rate term (bits per pixel)
    ssim_weight: float = 0.0        # weight of 1 - MS-SSIM (paper config)
    learning_rate: float = 3e-4
    clip_norm: float = 1.0
    batch_size: int = 8
    patch_size: int = 128
    seed: int = 0
    mixed_precision: bool = False


@dataclass(frozen=True)
class CodecConfig:
    name: str = "default"           # "default" (hybrid wavelet) or "paper"
    wavelet: WaveletConfig = field(default_factory=WaveletConfig)
    paper: PaperConfig = field(default_factory=PaperConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "CodecConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        parts = {}
        for f, sub in (("wavelet", WaveletConfig), ("paper", PaperConfig), ("train", TrainConfig)):
            vals = dict(d.get(f, {}))
            names = {x.name for x in dataclasses.fields(sub)}
            bad = set(vals) - names
            if bad:
                raise ValueError(f"unknown {f} config keys {sorted(bad)}")
            for k, v in vals.items():
                if isinstance(v, list):
                    vals[k] = tuple(v)
            parts[f] = sub(**vals)
        return cls(name=d.get("name", "default"), **parts)

    @classmethod
    def from_json(cls, text: str) -> "CodecConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes) -> "CodecConfig":
        """Copy with changes; nested fields as 'train.lmbda=0.02' style keys or whole sub-configs."""
        top, nested = {}, {}
        for k, v in changes.items():
            if "." in k:
                part, key = k.split(".", 1)
                nested.setdefault(part, {})[key] = v
            else:
                top[k] = v
        cfg = dataclasses.replace(self, **top)
        for part, kv in nested.items():
            cfg = dataclasses.replace(cfg, **{part: dataclasses.replace(getattr(cfg, part), **kv)})
        return cfg


def bundle_training_config(manifest: dict, *, seed: int, batch_size: int, learning_rate: float, patch_size: int,
                           lmbda: float, wavelet: dict | None = None) -> CodecConfig:
    """The config of a run that trains a learned part of a bundle: the bundle's config with its coder's own
    parameters (deadzone, reconstruction bias, levels, wavelet), `wavelet` changes and these training settings."""
    cfg = CodecConfig.from_dict(manifest["config"])
    codec = manifest["codec"]
    wav = dataclasses.replace(cfg.wavelet, deadzone=float(codec["deadzone"]), recon_bias=float(codec["recon_bias"]),
                              levels=int(codec["levels"]), wavelet=codec.get("wavelet", cfg.wavelet.wavelet),
                              **(wavelet or {}))
    tr = dataclasses.replace(cfg.train, seed=seed, batch_size=batch_size, learning_rate=learning_rate,
                             patch_size=patch_size, lmbda=lmbda, mixed_precision=False)
    return dataclasses.replace(cfg, name="default", wavelet=wav, train=tr)


NAMED = {
    "default": CodecConfig(name="default"),
    "paper": CodecConfig(name="paper", train=TrainConfig(lmbda=0.01, ssim_weight=0.1, patch_size=64)),
}


def named(name: str) -> CodecConfig:
    try:
        return NAMED[name]
    except KeyError:
        raise ValueError(f"unknown config {name!r}; choose one of {sorted(NAMED)}") from None
