"""How people and programs reach the engine: the command line, the HTTP API, the web pages."""
