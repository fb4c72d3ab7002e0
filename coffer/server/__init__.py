"""The HTTP service: API routes, request translation, auth, errors."""
