"""The experiment app (``python experiments/run.py``): stages, content-keyed caching, figures and the report."""
