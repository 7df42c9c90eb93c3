"""scribe http-gateway: OpenAI-compatible HTTP in front of the Ingest and Results gRPC services."""

SERVICE_NAME = "scribe-http-gateway"
