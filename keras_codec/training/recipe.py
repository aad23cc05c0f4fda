"""One recipe: every stage of training the `default` model and its hyper-parameters, in one place.

A :class:`Recipe` lists the stages run in order from step 0 (`stages`) and those run when
fine-tuning an existing bundle (`finetune`, `keras-codec train --from BUNDLE`), the model
config the first stage starts from, the seed, how the validation part is split off, and the
qualities of the final report. It is saved as ``recipe.json`` in the run and recorded in the
bundle's manifest (``training.recipe``), so a bundle says how it was made.

Named recipes:

- ``default``: what ships in ``edge_runtime/models/default``, read off its manifest: context
  fit (9 qualities, crops of 1024², 2 frames), post-filter 9,000 steps (batch 16, lr 1e-3),
  int8 export, residual fit, refinement 16,000 steps (batch 16, lr 5e-4) with the context
  refit (8 ReLU units), post-filter fine-tune 3,000 steps (lr 3e-4), int8 export, residual fit.
  Where the prose recipes disagree with the manifest (the README's `--stage refine` at batch 8)
  the manifest wins.
- ``quick``: the same stages, scaled down (fewer steps, smaller crops, fewer fit qualities)
  to run in about 10 minutes on 2 CPU cores over a few dozen images.

Fine-tuning (`finetune`) trains the bundle's refinement further and keeps its context model,
tables and post-filter. Measured on the shipped bundle fine-tuned (quick, 600 refinement steps) on
two CT train images of the corpus, BD-rate of the test CT against JPEG 2000 (keras-codec bench
--backend keras; the shipped bundle: -12.2 %): refinement alone -11.4 %; with the context model
refitted -7.8 %; refinement, then post-filter 400 steps at lr 1e-4: -8.4 %; refit and post-filter
at 3e-4: -3.5 %.

A JSON file overrides a named recipe: ``{"base": "quick", "seed": 3, "stages": [...]}``;
every top-level field given replaces the base's (stage lists are replaced whole).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from keras_codec.config import CodecConfig

__all__ = ["ContextFit", "PostFilter", "Export", "Residual", "Refine", "Recipe", "STAGE_KINDS", "named_recipe",
           "load_recipe", "RECIPES"]

FIT_QUALITIES = (2, 5, 9, 12, 14, 16, 18, 20, 22)
"""Quality levels of the context fit and of the refit after the refinement (the shipped bundle's)."""


@dataclass(frozen=True)
class ContextFit:
    """Stage 1 from scratch: the integer context model and the tables by maximum likelihood
    (keras_codec.training.fit_default.fit_default)."""

    kind: str = "context_fit"
    max_side: int = 1024            # centred crop of each plane
    max_frames: int = 2             # frames per image fitted on
    qualities: tuple = FIT_QUALITIES
    learned_tables: bool = True


@dataclass(frozen=True)
class PostFilter:
    """The learned post-filter behind the codec (keras_codec.training.postfilter)."""

    kind: str = "postfilter"
    steps: int = 9000
    batch_size: int = 16
    patch_size: int = 128
    channels: int = 12
    layers: int = 3
    input_scaling: str = "step"
    learning_rate: float = 1e-3
    init_from_bundle: bool = False  # fine-tune the input bundle's filter instead of a zero-initialized one
    measure_gain: bool = True       # PSNR gain through the real coder on a few train images, recorded


@dataclass(frozen=True)
class Export:
    """TFLite encoder/decoder graphs (and the int8 post-filter) for the edge (export.conversion)."""

    kind: str = "export"
    quant: str = "int8"


@dataclass(frozen=True)
class Residual:
    """The residual model of the --max-error / lossless mode (keras_codec.training.fit_residual)."""

    kind: str = "residual"
    max_side: int = 512


@dataclass(frozen=True)
class Refine:
    """The learned lifting refinement, trained with the in-graph context entropy model, then the context
    model refitted on the refined transform (keras_codec.training.refine)."""

    kind: str = "refine"
    steps: int = 16000
    batch_size: int = 16
    patch_size: int = 128
    channels: int = 8
    layers: int = 3
    learning_rate: float = 5e-4
    context_hidden: int = 8         # ReLU units per context group in the refit
    init_from_bundle: bool = False  # fine-tune the input bundle's refinement instead of starting at zero
    refit: bool = True              # refit the context model and tables on the refined transform
    refit_max_side: int = 1024
    refit_max_frames: int = 2
    refit_qualities: tuple = FIT_QUALITIES


STAGE_KINDS = {cls.kind: cls for cls in (ContextFit, PostFilter, Export, Residual, Refine)}
Stage = Union[ContextFit, PostFilter, Export, Residual, Refine]


def stage_from_dict(d: dict) -> Stage:
    kind = d.get("kind")
    if kind not in STAGE_KINDS:
        raise ValueError(f"recipe stage {d!r}: unknown kind {kind!r}; choose one of {sorted(STAGE_KINDS)}")
    cls = STAGE_KINDS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    bad = set(d) - names
    if bad:
        raise ValueError(f"recipe stage {kind!r}: unknown keys {sorted(bad)}; it takes {sorted(names - {'kind'})}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass(frozen=True)
class Recipe:
    """Everything a training run depends on besides the images."""

    name: str = "default"
    seed: int = 0
    config: CodecConfig = field(default_factory=CodecConfig)
    stages: tuple = ()
    finetune: tuple = ()
    val_fraction: float = 0.2       # share of the images (whole patients/studies) held out for the report
    split_by: str = "patient"       # "patient" (DICOM PatientID, else StudyInstanceUID, else the file) or "file"
    report_qualities: Optional[tuple] = None  # quality levels of the final RD report (None: every level)

    def __post_init__(self):
        if self.split_by not in ("patient", "file"):
            raise ValueError(f"recipe split_by must be 'patient' or 'file', got {self.split_by!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"recipe val_fraction must be in (0, 1), got {self.val_fraction}")
        for which in ("stages", "finetune"):
            for s in getattr(self, which):
                if not isinstance(s, tuple(STAGE_KINDS.values())):
                    raise ValueError(f"recipe {which}: {s!r} is not a stage")
                if getattr(s, "steps", 1) < 1:
                    raise ValueError(f"recipe {which}: a {s.kind} stage needs steps >= 1, got {s.steps}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return json.loads(json.dumps(d))  # tuples -> lists: the same dict as from_dict(to_dict()) saves

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def digest(self) -> str:
        """SHA-256 of the canonical JSON: equal digests, equal recipes."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        names = {f.name for f in dataclasses.fields(cls)}
        bad = set(d) - names
        if bad:
            raise ValueError(f"unknown recipe keys {sorted(bad)}; a recipe has {sorted(names)}")
        vals = dict(d)
        if "config" in vals:
            vals["config"] = CodecConfig.from_dict(vals["config"])
        for which in ("stages", "finetune"):
            if which in vals:
                vals[which] = tuple(stage_from_dict(s) for s in vals[which])
        if vals.get("report_qualities") is not None:
            vals["report_qualities"] = tuple(vals["report_qualities"])
        return cls(**vals)

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)


def _default() -> Recipe:
    return Recipe(
        name="default",
        stages=(ContextFit(), PostFilter(), Export(), Residual(), Refine(),
                PostFilter(steps=3000, learning_rate=3e-4, init_from_bundle=True), Export(), Residual()),
        finetune=(Refine(steps=4000, init_from_bundle=True, refit=False), Export(), Residual()))


QUICK_QUALITIES = (2, 9, 14, 18, 22)


def _quick() -> Recipe:
    fit = dict(refit_max_side=512, refit_max_frames=1, refit_qualities=QUICK_QUALITIES)
    return Recipe(
        name="quick",
        stages=(ContextFit(max_side=512, max_frames=1, qualities=QUICK_QUALITIES),
                PostFilter(steps=1200, measure_gain=False), Export(), Residual(max_side=256),
                Refine(steps=1500, **fit),
                PostFilter(steps=400, learning_rate=3e-4, init_from_bundle=True, measure_gain=False),
                Export(), Residual(max_side=256)),
        finetune=(Refine(steps=600, init_from_bundle=True, refit=False), Export(), Residual(max_side=256)),
        report_qualities=(6, 9, 12, 14, 16, 18, 20, 22))


RECIPES = {"default": _default, "quick": _quick}


def named_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]()
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)} or a recipe .json file") from None


def load_recipe(spec: str) -> Recipe:
    """A named recipe, or a JSON file: a whole recipe, or {"base": NAME, ...fields replacing the base's}."""
    if spec in RECIPES:
        return named_recipe(spec)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"recipe {spec!r}: neither a named recipe ({', '.join(sorted(RECIPES))}) nor a JSON file")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: a recipe file holds one JSON object")
    base = d.pop("base", None)
    if base is None:
        return Recipe.from_dict(d)
    merged = {**named_recipe(base).to_dict(), **d}
    if "name" not in d:
        merged["name"] = f"{base}+{path.stem}"
    return Recipe.from_dict(merged)
