"""Operating the server: Prometheus alert rules and their checks, a Prometheus server started for a run."""
