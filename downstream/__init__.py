"""Consumer side of daisy: featurizers and MiniSUPERB-style probes over exited representations."""
