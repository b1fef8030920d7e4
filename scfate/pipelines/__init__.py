"""Pipeline stages: the one place a Hydra DictConfig becomes explicit arguments for the layers below.

``backbone`` (train / resolve the rotation autoencoder of a split), ``flow`` (prior + flow head + evaluation),
``reflow`` (few-step students), ``evaluate`` (``evaluate.py``), ``router`` (the router ensemble for unseen drugs);
``config`` holds the small Hydra helpers they share and ``training`` the Lightning fit-and-restore they share.
"""
