"""One module or package per stage: its params section, its `run(cfg)` and its result."""
