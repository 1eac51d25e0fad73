"""The app's stages, one module each, in the order a run visits them:

for each dataset of the study, ``dataset`` → ``extraction`` → ``matrices`` → ``significance`` →
``intrinsic_dimension`` → ``id_correlation`` → ``tree`` → ``reconstruction`` → ``energy`` → ``maps``; then
``cross_dataset`` (a study of several datasets), ``figures`` → ``report``. ``context`` and ``graphs`` hold what the
analysis stages share; :mod:`experiments.pipeline` runs them. A new analysis is a new module here and one call in the
pipeline.
"""
