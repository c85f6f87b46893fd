"""perfkit: measure what each LLM-serving optimization really buys, on your model and machine."""

__version__ = "0.1.0"
