"""scribe transcriber: decodes batch jobs of its pool with faster-whisper on one device."""

SERVICE_NAME = "scribe-transcriber"
