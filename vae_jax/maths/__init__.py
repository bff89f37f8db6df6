"""The maths a paper writes down, in pure jnp (no Flax, no I/O): Gaussians, likelihoods, the
derived objective and the named random streams."""
