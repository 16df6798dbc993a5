"""Generated gRPC code: see protos/ and recsys.protogen."""
