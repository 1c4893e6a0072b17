"""The main window's pages and the widgets they share (one file per panel)."""
