"""Built-in metrics plugins, one module each; imported by the registry on first use."""
