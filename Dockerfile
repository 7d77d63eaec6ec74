# geoalign serve, CPU. Build:  docker build -t geoalign-serve .
# Run:                         docker run -p 8000:8000 geoalign-serve
# The image is self-contained and read-only at run time: the official GeoCLIP weights (from the
# geoclip wheel), CLIP ViT-L/14's vision tower and the 100K gallery's location embeddings are all
# fetched or computed at build time, so a replica starts without network and without writing.
# CUDA variant: start FROM an nvidia/cuda runtime image with Python 3.11, install torch from the
# cu12x index instead of the CPU one, and run with `--gpus all` and `--device cuda`.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GEOALIGN_HOME=/opt/geoalign/cache \
    HF_HOME=/opt/geoalign/hf

WORKDIR /opt/geoalign/src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch torchvision \
 && pip install ".[serve]"

# Bake the weights and the gallery cache into the image (the only steps that use the network).
RUN python -c "from geoalign.nn.backbones import load_backbone; load_backbone('clip-vit-l14')" \
 && python -c "from geoalign.inference.locator import Geolocator; Geolocator.from_pretrained('geoclip', backbone=None)" \
 && chmod -R a-w /opt/geoalign/cache /opt/geoalign/hf

ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
RUN useradd --system --uid 10001 geoalign
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
# 0.0.0.0 inside the container only; publish the port deliberately. Add --api-key-file with a
# mounted secret when the port is reachable by others.
CMD ["geoalign", "serve", "--host", "0.0.0.0", "--port", "8000"]
