"""Training the `default` model from one recipe: the recipe, the user's images, the stages, the pipeline.

    keras-codec train --data DIR [DIR...] --out RUN [--recipe default|quick|FILE.json] [--from [BUNDLE]]

:mod:`.recipe` (every stage and hyper-parameter), :mod:`.data` (folders of DICOM, PNG, TIFF and
NIfTI, split by patient), :mod:`.stages` (one function per stage kind over the existing trainers),
:mod:`.pipeline` (runs a recipe: resumable, progress with ETA, final bundle and RD report).
"""
