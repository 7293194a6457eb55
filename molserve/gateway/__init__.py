"""The HTTP gateway: routes, tier routing, validation, metrics. Never imports torch."""
