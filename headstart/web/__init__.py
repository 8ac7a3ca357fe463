"""What the HTTP ingress needs beyond its routes: API keys and rate limits, the signed ruleset,
the Segment-compatible mapping, Prometheus metrics and webhook delivery."""
