-- The MLflow backend store lives beside Prefect's database (POSTGRES_DB) on the same server.
CREATE DATABASE mlflow;
