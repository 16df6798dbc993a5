"""The ranking service: a grpc.aio server answering ``RankingService.Recommend``."""
