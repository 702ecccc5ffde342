"""Real local servers for development and tests: started from registry packages, no Docker."""
