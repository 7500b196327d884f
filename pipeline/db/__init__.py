"""Database access: engine and embedded server, table definitions, partitions, COPY writer."""
