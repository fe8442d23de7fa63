"""Storage: a Protocol (``base``), the tables (``schema``) and the PostgreSQL adapter."""
