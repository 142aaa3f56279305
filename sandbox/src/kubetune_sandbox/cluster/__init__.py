"""Controllers, kubelet, services and S3 around the emulator: a cluster on one machine."""
