"""The apps shipped with pgtide (api/apps.py says what an app is)."""
