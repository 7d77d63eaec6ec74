"""Neural building blocks: Fourier features, location encoder, image head, backbones."""
