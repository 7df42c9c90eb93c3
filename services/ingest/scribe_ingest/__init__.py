"""scribe ingest service: accepts batch jobs (Ingest.CreateJob) and queues them on a pool."""

SERVICE_NAME = "scribe-ingest"
