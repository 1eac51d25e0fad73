"""One module per model family; each exposes ``SPECS`` and ``build(spec, **options)`` (see extractors.registry)."""
