"""Inference service settings (env prefix RECSYS_INFERENCE_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from recsys.settings import ArtifactSettings, KafkaSettings, ObservabilitySettings


class InferenceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_INFERENCE_", extra="ignore")

    group_id: str = Field("recsys-inference", description="consumer group")
    max_batch_size: int = Field(256, ge=1, description="sequences encoded in one ONNX call")
    max_wait_ms: int = Field(20, ge=0, description="longest wait to fill a batch")
    prefer_cuda: bool = Field(True, description="use CUDAExecutionProvider when present")
    intra_op_threads: int = Field(1, ge=0, description="ONNX Runtime threads (0 = all cores)")
    grpc_port: int = Field(50052, ge=0, le=65535, description="Embed gRPC port (0 = off)")
    text_cache_dir: Path = Field(Path(".cache/text-embeddings"), description="item text cache")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    artifacts: ArtifactSettings = Field(default_factory=ArtifactSettings)
    obs: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
