"""HTTP plumbing: the response envelope, error translation, request ids, authentication."""
