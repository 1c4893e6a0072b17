"""Gemma Desktop: run Google's Gemma models on your own workstation through vLLM."""

__version__ = "0.1.0"
APP_NAME = "Gemma Desktop"
APP_ID = "gemma-desktop"
