"""neko-supervisor's benchmark: `python -m bench` (see __main__.py and README, Performance)."""
