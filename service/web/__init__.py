"""HTTP: create_app(config) in app.py, routes, middlewares, handlers (one module per resource), schemas."""
