"""The app's stages, one module each, in the order a run visits them:

``dataset`` → ``extraction`` → ``matrices`` → ``significance`` → ``intrinsic_dimension`` → ``reconstruction`` →
``energy`` → ``maps`` → ``figures`` → ``report``. ``context`` and ``graphs`` hold what the analysis stages share;
:mod:`experiments.pipeline` runs them. A new analysis is a new module here and one call in the pipeline.
"""
