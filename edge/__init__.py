"""The edge gateway: HTTP + WebSocket for the apps, gRPC client of every other service."""
