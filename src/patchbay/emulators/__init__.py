"""Local emulators of the services Patchbay talks to, for tests and demos (never production)."""
