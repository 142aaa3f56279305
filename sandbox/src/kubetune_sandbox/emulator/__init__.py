"""A Kubernetes API server emulator (on kmock) for tests and the local sandbox."""
