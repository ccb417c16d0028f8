"""Request handlers, one module per resource; each calls one use case and shapes the envelope."""
