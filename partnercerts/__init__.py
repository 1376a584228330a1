"""partnercerts: custody and rotation of PSA/Stellantis B2B API partner credentials."""

__version__ = "0.1.0"
