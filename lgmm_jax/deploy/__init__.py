"""Deployment: what an export is made of, loading it, its compiled serving function, and the evaluation forward pass both share."""
