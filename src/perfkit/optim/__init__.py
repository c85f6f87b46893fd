"""Optimizations that transform what is served: the model (`quantize`) and the bytes on the wire (`compress`)."""
