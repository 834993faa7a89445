"""maskkit: face-image classification under heavy class imbalance, over one SQLite catalog."""

__version__ = "0.1.0"
