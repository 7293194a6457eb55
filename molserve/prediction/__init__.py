"""Answering predictions, for every caller (the gateway, `molserve predict`, screening jobs).

`tiers` holds the in-process tiers (fast models, computed properties) and `remote` the
transformer tier reached over HTTP; all speak one small protocol. `router` plans per endpoint
which tier answers, hedges, degrades and assembles. Faces (HTTP, CLI, jobs) only translate.
"""
