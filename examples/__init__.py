"""Examples that ship with fedrec: ``fedrec_app.examples.my_model:Bilinear`` (bring your own
model, usable as ``--model fedrec_app.examples.my_model:Bilinear`` from any directory) and
``fedrec_app.examples.device`` (the on-device API)."""
