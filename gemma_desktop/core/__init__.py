"""Qt-free logic of Gemma Desktop: catalog, settings, probe, engine, downloads, history.

Nothing under this package may import Qt; ``tests/test_layering.py`` enforces it.
"""
