"""The version of ncbounds (one place; the package and every record read it from here)."""

__version__ = "0.2.0"
