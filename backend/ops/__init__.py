"""Operations on a deployment as a whole: backup and restore of the database."""
