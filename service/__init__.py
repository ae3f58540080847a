"""The skipvit HTTP service. Nothing heavy happens at import: see ``service.app.create_app``."""
