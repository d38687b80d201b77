"""Built-in methods plugins, one module each; imported by the registry on first use."""
