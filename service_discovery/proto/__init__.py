"""Python modules generated from protos/discovery.proto (run `python -m
service_discovery.proto.generate` after editing the .proto; tests/test_grpc.py checks they match).
"""
