SIDE = 2  # pixels per token side in the stand-in
