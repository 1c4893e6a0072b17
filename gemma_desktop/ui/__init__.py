"""Qt widgets and windows; each receives the services it uses (see ``app.py``)."""
