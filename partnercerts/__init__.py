"""partnercerts: custody and rotation of PSA/Stellantis B2B API partner credentials."""
