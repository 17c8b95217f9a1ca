"""The GU2Net landmark app's code: the bundle's inference path, Slicer markups, image geometry, training."""
