"""Persisted jobs (training, large screens) that run outside requests and survive restarts."""
