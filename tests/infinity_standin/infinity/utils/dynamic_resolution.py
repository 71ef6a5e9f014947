"""A stand-in for Infinity's infinity/utils/dynamic_resolution.py: the table the runner reads, small."""

dynamic_resolution_h_w = {
    1.0: {pn: {"scales": [(1, 1, 1), (1, 2, 2), (1, 4, 4), (1, 8, 8)]} for pn in ("0.06M", "0.25M", "1M")},
}
