"""HiddenScope ingest service: uploads, safe loaders, conversion jobs, the dataset catalog."""
