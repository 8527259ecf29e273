"""The dashboard: static files served at /ui, calling the JSON API with the user's key."""
