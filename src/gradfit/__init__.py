"""gradfit: learning as parameter estimation."""
