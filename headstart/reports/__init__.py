"""The batch side (polars): signal, segment and experiment reports, off-policy evaluation and the
warehouse export."""
