"""Getting a machine ready to run Kapal: Docker engine, base runtime images, Postgres."""
