"""Warehouses loaded from the committed files: DuckDB, Snowflake, BigQuery, Glue (Spectrum)."""
