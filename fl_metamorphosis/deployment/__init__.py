"""Real devices: TLS certificates, device keys and device data folders (no Flower import here)."""
