"""One file per method; each model exposes encode_images, encode_locations and scores."""
