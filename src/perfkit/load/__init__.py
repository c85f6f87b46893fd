"""Load generation: Locust in its own process (`runner`), its locustfile, and the numbers a run yields (`results`).

Nothing here imports Locust: only `locustfile.py` does, inside the Locust process.
"""
