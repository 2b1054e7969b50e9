"""Real devices: TLS certificates, device keys and device data folders (no Flower import here)."""

# The SuperLink's own port, bound to 127.0.0.1 only: the operator's ``flwr`` commands and the ServerApp
# reach it there; devices reach the Fleet gateway on the public port instead (fleet_gateway.py).
CONTROL_PORT = 9093
