-- MLflow keeps its tracking/registry tables in a database of its own beside Airflow's.
CREATE DATABASE mlflow OWNER airflow;
