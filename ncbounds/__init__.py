"""ncbounds: neural-collapse statistics and generalization bounds for trained classifiers."""

__version__ = "0.1.0"
