"""scribe stream gateway: live calls in, interim and final results out, the call stored as a job."""

SERVICE_NAME = "scribe-stream-gateway"
