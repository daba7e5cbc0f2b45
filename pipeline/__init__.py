"""Everything that *writes* caches: sources, decoding, encoders, stages, the DAG and executors."""
