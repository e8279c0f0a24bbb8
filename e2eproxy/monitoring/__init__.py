"""Operations: Prometheus metrics, health checks and the listener that serves them."""
