"""Measuring tools that are not stages: bytes on the wire, shaped links between network namespaces."""
