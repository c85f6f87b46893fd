"""Where a perfkit checkout keeps its inputs and results, relative to its root: written once, read by the config, the
stage declarations and `perfkit prepare` alike (a module with no imports, so none of them imports another for a path)."""

CORPUS = "data/corpus"
CLAIMS = "data/claims.yaml"
MODEL_DIR = "data/models/smollm2-135m-instruct"  # the default model, converted by `perfkit prepare`
# A smoke run's whole experiments root (git-ignored): it never writes over the committed results, and the stages that
# read others' results (optimized, capacity, report) read the smoke run's own there.
SMOKE_EXPERIMENTS = ".cache/smoke/experiments"
