"""Everything that only makes training faster, applied to a reference model by one call (`accelerate`): each
path equals the reference or declines out loud."""
