"""Training: the loop, the trainers and fitters of each stage, and one recipe that chains them.

    keras-codec train --data DIR [DIR...] --out RUN [--recipe default|quick|FILE.json] [--from [BUNDLE]]

- :mod:`.loop`: the training loop every trained model shares (resumable checkpoints, CSV log, strategies);
- the stages of the `default` model: :mod:`.fit_default` (context model and tables by maximum likelihood,
  with :mod:`.context_fit`), :mod:`.postfilter` (the learned post-filter), :mod:`.refine` (the learned
  lifting refinement), :mod:`.fit_residual` (the residual model of the --max-error mode) and
  :mod:`.fit_steps` (per-level quantizer step multipliers); :mod:`.paper` trains the paper model;
- :mod:`.recipe` (every stage and hyper-parameter), :mod:`.data` (folders of DICOM, PNG, TIFF and NIfTI,
  split by patient), :mod:`.stages` (one function per stage kind over the trainers),
  :mod:`.pipeline` (runs a recipe: resumable, progress with ETA, final bundle and RD report).
"""
