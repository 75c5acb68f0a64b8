"""Ready recipes shipped with the package; each is exercised by a test."""
