"""motfm: fast medical image synthesis with optimal-transport flow matching."""

__version__ = "0.1.0"
