"""One module per ``gemma-desktop`` subcommand (see :mod:`gemma_desktop.cli`)."""
