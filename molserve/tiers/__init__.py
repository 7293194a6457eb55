"""The tiers that run in-process (fast models, computed properties) behind one interface,
and the predictor that parses a request once and asks them."""
