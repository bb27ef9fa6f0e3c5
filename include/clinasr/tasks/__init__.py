"""Task bodies of the Airflow DAGs, one module per DAG file (``dags/clinasr_X.py`` <-> ``tasks/X.py``).
Imported inside tasks only, never at DAG parse time."""
