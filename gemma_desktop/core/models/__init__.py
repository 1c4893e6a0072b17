"""The models: the catalog, what is on disk (``hub_cache``), downloads and the bundled model."""
