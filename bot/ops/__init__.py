"""Operations: serving (polling or webhook), health, metrics, backups, the healthcheck probe."""
