"""This machine: its NVIDIA GPUs (``gpu``) and whether it can run a model (``probe``)."""
