"""`geoalign serve`: the prediction pipeline behind an HTTP API and a web page.

The app (`app.create_app`) sits on top of `geoalign.inference`: one `Engine` per worker process
holds the model, `Batcher` coalesces concurrent requests into one backbone batch, and every
response carries the same prediction record the CLI writes (`Prediction.to_dict`).
"""
