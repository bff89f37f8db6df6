"""The config's rules without JAX: the valid names of every choice field, and their checks."""
