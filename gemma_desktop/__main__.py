"""``python -m gemma_desktop`` behaves like the ``gemma-desktop`` command."""

from gemma_desktop.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
