"""Built-in datasets plugins, one module each; imported by the registry on first use."""
